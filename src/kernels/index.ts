/** Choosing a compute back end by name. */
import type { Backend, BackendName } from './types.js';
import { TsBackend } from './ts/backend.js';
import { KiviError } from '../util/errors.js';

export type { BackendName } from './types.js';
export type BackendChoice = BackendName | 'auto';
export const BACKENDS: readonly string[] = ['ts', 'wasm', 'auto'];

export interface BackendOptions {
  /** 'ts' (pure TypeScript), 'wasm' (WebAssembly SIMD) or 'auto' (wasm when it loads; the default). */
  backend?: BackendChoice;
  /** Threads for the wasm back end (default: the core count). The ts back end is single-threaded. */
  threads?: number;
}

export function checkThreads(threads: number | undefined): void {
  if (threads !== undefined && (!Number.isInteger(threads) || threads < 1 || threads > 256)) {
    throw new KiviError(`threads must be an integer from 1 to 256, got ${threads}`);
  }
}

async function loadWasm(threads: number | undefined): Promise<Backend> {
  // Each platform brings the module and the threads its own way; browser bundles never load node.js.
  const inNode = typeof process !== 'undefined' && !!process.versions?.node;
  const platform = inNode ? await import('./wasm/node.js') : await import('./wasm/browser.js');
  return platform.createWasmBackend(threads ?? platform.defaultThreads());
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
    case 'auto':
      try {
        return await loadWasm(opts.threads);
      } catch (e) {
        if (e instanceof KiviError) throw e;
        return new TsBackend();
      }
    default:
      throw new KiviError(`unknown backend "${String(name)}" (valid: ${BACKENDS.join(', ')})`);
  }
}

export type { Backend } from './types.js';
