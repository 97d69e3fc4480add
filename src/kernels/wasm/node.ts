/** Node's side of the WebAssembly back end: read the compiled module, run helpers as worker threads. */
import { readFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { type HelperFactory, WasmBackend } from './kernels.js';

let compiled: Promise<WebAssembly.Module> | undefined;

/** The kernel module (compiled once per process). */
export function kernelModule(): Promise<WebAssembly.Module> {
  compiled ??= readFile(new URL('./kernels.wasm', import.meta.url)).then((b) => WebAssembly.compile(b));
  return compiled;
}

/** The default thread count: the cores this process may use. */
export function defaultThreads(): number {
  return availableParallelism();
}

const startWorkers: HelperFactory = async (init, count) => {
  const workers: Worker[] = [];
  try {
    for (let tid = 1; tid <= count; tid++) {
      // No inherited execArgv: flags meant for the main script (--input-type, --eval, ...) break workers.
      const w = new Worker(new URL('./worker.js', import.meta.url), { workerData: { ...init, tid }, execArgv: [] });
      workers.push(w);
      await new Promise<void>((resolve, reject) => {
        w.once('message', () => resolve());
        w.once('error', reject);
        w.once('exit', (code) => reject(new Error(`worker thread exited with code ${code} while starting`)));
      });
      w.removeAllListeners();
      // Helpers never keep the process alive; errors after start surface through the job protocol.
      w.on('error', () => {});
      w.unref();
    }
  } catch (e) {
    for (const w of workers) void w.terminate();
    throw e;
  }
  return {
    terminate: () => {
      for (const w of workers) void w.terminate();
    },
  };
};

export async function createWasmBackend(threads = defaultThreads()): Promise<WasmBackend> {
  return WasmBackend.create({ module: await kernelModule(), threads, helpers: startWorkers });
}
