/**
 * The browser's side of the WebAssembly back end: fetch the compiled module from beside this script,
 * run helpers as Web Workers. The module's memory is shared, so it needs a cross-origin isolated page
 * (COOP/COEP headers, as `kivi web` sends); helper threads need the caller to be a worker (the main
 * thread may not block in Atomics.wait), so on a page's main thread it runs single-threaded.
 */

import { KiviError } from '../../util/errors.js';
import { type HelperFactory, WasmBackend } from './kernels.js';

let compiled: Promise<WebAssembly.Module> | undefined;

/** The kernel module (compiled once per realm). */
export function kernelModule(): Promise<WebAssembly.Module> {
  compiled ??= (async () => {
    const url = new URL('./kernels.wasm', import.meta.url);
    const res = await fetch(url);
    if (!res.ok) throw new Error(`cannot fetch ${url.href}: HTTP ${res.status}`);
    return WebAssembly.compile(await res.arrayBuffer());
  })();
  compiled.catch(() => (compiled = undefined));
  return compiled;
}

/** A worker's global scope has no `document`; the page's main thread has one. */
const onMainThread = () => typeof (globalThis as { document?: unknown }).document !== 'undefined';

/** The default thread count: the cores the browser reports (one on the main thread). */
export function defaultThreads(): number {
  return onMainThread() ? 1 : Math.max(1, navigator.hardwareConcurrency || 1);
}

const startWorkers: HelperFactory = async (init, count) => {
  const workers: Worker[] = [];
  try {
    for (let tid = 1; tid <= count; tid++) {
      const w = new Worker(new URL('./browser-helper.js', import.meta.url), { type: 'module' });
      workers.push(w);
      await new Promise<void>((resolve, reject) => {
        w.onmessage = () => resolve();
        w.onerror = (e) => reject(new Error(`a wasm helper worker failed to start: ${e.message || 'script error'}`));
        w.postMessage({ ...init, tid });
      });
      w.onmessage = null;
      w.onerror = null;
    }
  } catch (e) {
    for (const w of workers) w.terminate();
    throw e;
  }
  return {
    terminate: () => {
      for (const w of workers) w.terminate();
    },
  };
};

export async function createWasmBackend(threads = defaultThreads()): Promise<WasmBackend> {
  if (!(globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated) {
    throw new Error('shared WebAssembly memory needs a cross-origin isolated page (COOP/COEP headers)');
  }
  if (threads > 1 && onMainThread()) {
    throw new KiviError("the wasm back end runs one thread on a page's main thread; use more threads inside a Web Worker");
  }
  return WasmBackend.create({ module: await kernelModule(), threads, helpers: startWorkers });
}
