/** Choosing a compute back end by name. */

import { KiviError } from '../util/errors.js';
import { TsBackend } from './ts/backend.js';
import type { Backend, BackendName } from './types.js';
import type { WebGpuOptions } from './webgpu/device.js';

export type { BackendName } from './types.js';
export type BackendChoice = BackendName | 'auto';
export const BACKENDS: readonly string[] = ['ts', 'wasm', 'webgpu', 'auto'];

export interface BackendOptions {
  /**
   * 'ts' (pure TypeScript), 'wasm' (WebAssembly SIMD), 'webgpu' (the GPU through WebGPU) or 'auto' (the
   * default: webgpu where a hardware GPU adapter exists, else wasm when it loads, else ts).
   */
  backend?: BackendChoice;
  /** Threads for the wasm back end (default: the core count). The ts back end is single-threaded. */
  threads?: number;
  /** WebGPU settings (tests: SwiftShader; a smaller largest binding). */
  webgpu?: WebGpuOptions;
}

export function checkThreads(threads: number | undefined): void {
  if (threads !== undefined && (!Number.isInteger(threads) || threads < 1 || threads > 256)) {
    throw new KiviError(`threads must be an integer from 1 to 256, got ${threads}`);
  }
}

const inNode = () => typeof process !== 'undefined' && !!process.versions?.node;

async function loadWasm(threads: number | undefined): Promise<Backend> {
  // Each platform brings the module and the threads its own way; browser bundles never load node.js.
  const platform = inNode() ? await import('./wasm/node.js') : await import('./wasm/browser.js');
  return platform.createWasmBackend(threads ?? platform.defaultThreads());
}

async function loadWebGpu(o: WebGpuOptions): Promise<Backend> {
  const { WebGpuBackend } = await import('./webgpu/backend.js');
  return WebGpuBackend.create(o);
}

/**
 * `auto`'s WebGPU: only on a hardware adapter (a software one such as SwiftShader is for tests), and in
 * Node only where the optional package, a Vulkan loader and a GPU's device node are present (so nothing is
 * printed when not).
 */
async function hardwareWebGpu(o: WebGpuOptions): Promise<Backend | null> {
  try {
    if (inNode()) {
      const node = await import('./webgpu/node.js');
      if (node.webgpuPackageMissing() || !node.vulkanLoaderPresent() || !node.gpuDeviceNodePresent()) return null;
    } else if (!(globalThis as { navigator?: { gpu?: unknown } }).navigator?.gpu) {
      return null;
    }
    const { findAdapter } = await import('./webgpu/device.js');
    if (!(await findAdapter(o, true))) return null;
    return await loadWebGpu(o);
  } catch {
    return null;
  }
}

export async function createBackend(opts: BackendOptions = {}): Promise<Backend> {
  const name = opts.backend ?? 'auto';
  checkThreads(opts.threads);
  switch (name) {
    case 'ts':
      return new TsBackend();
    case 'wasm':
      try {
        return await loadWasm(opts.threads);
      } catch (e) {
        if (e instanceof KiviError) throw e;
        throw new KiviError(`the wasm back end is unavailable here: ${(e as Error)?.message ?? String(e)}`);
      }
    case 'webgpu':
      try {
        return await loadWebGpu(opts.webgpu ?? {});
      } catch (e) {
        if (e instanceof KiviError) throw e;
        throw new KiviError(`the webgpu back end is unavailable here: ${(e as Error)?.message ?? String(e)}`);
      }
    case 'auto': {
      const gpu = opts.webgpu?.swiftshader ? null : await hardwareWebGpu(opts.webgpu ?? {});
      if (gpu) return gpu;
      try {
        return await loadWasm(opts.threads);
      } catch (e) {
        if (e instanceof KiviError) throw e;
        return new TsBackend();
      }
    }
    default:
      throw new KiviError(`unknown backend "${String(name)}" (valid: ${BACKENDS.join(', ')})`);
  }
}

export type { Backend } from './types.js';
