/** Choosing a compute back end by name. */
import type { Kernels } from './types.js';
import { TsKernels } from './ts/reference.js';
import { KiviError } from '../util/errors.js';

export type BackendName = 'ts' | 'wasm' | 'auto';
export const BACKENDS: readonly string[] = ['ts', 'wasm', 'auto'];

export interface BackendOptions {
  /** 'ts' (pure TypeScript), 'wasm' (WebAssembly SIMD) or 'auto' (wasm when it loads; the default). */
  backend?: BackendName;
  /** Threads for the wasm back end (default: the core count). The ts back end is single-threaded. */
  threads?: number;
}

export function checkThreads(threads: number | undefined): void {
  if (threads !== undefined && (!Number.isInteger(threads) || threads < 1 || threads > 256)) {
    throw new KiviError(`threads must be an integer from 1 to 256, got ${threads}`);
  }
}

async function loadWasm(threads: number | undefined): Promise<Kernels> {
  // Each platform brings the module and the threads its own way; browser bundles never load node.js.
  const inNode = typeof process !== 'undefined' && !!process.versions?.node;
  const platform = inNode ? await import('./wasm/node.js') : await import('./wasm/browser.js');
  return platform.createWasmKernels(threads ?? platform.defaultThreads());
}

export async function createKernels(opts: BackendOptions = {}): Promise<Kernels> {
  const name = opts.backend ?? 'auto';
  checkThreads(opts.threads);
  switch (name) {
    case 'ts':
      return new TsKernels();
    case 'wasm':
      try {
        return await loadWasm(opts.threads);
      } catch (e) {
        if (e instanceof KiviError) throw e;
        throw new KiviError(`the wasm back end is unavailable here: ${(e as Error)?.message ?? String(e)}`);
      }
    case 'auto':
      try {
        return await loadWasm(opts.threads);
      } catch (e) {
        if (e instanceof KiviError) throw e;
        return new TsKernels();
      }
    default:
      throw new KiviError(`unknown backend "${String(name)}" (valid: ${BACKENDS.join(', ')})`);
  }
}

export type { Kernels } from './types.js';
export { AttentionPlan } from './plan.js';
