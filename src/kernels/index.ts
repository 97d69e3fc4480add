/** Choosing a compute back end by name. */
import type { Kernels } from './types.js';
import { TsKernels } from './ts/reference.js';
import { KiviError } from '../util/errors.js';

export type BackendName = 'ts' | 'auto';
export const BACKENDS: readonly string[] = ['ts', 'auto'];

export interface BackendOptions {
  backend?: BackendName;
}

export async function createKernels(opts: BackendOptions = {}): Promise<Kernels> {
  const name = opts.backend ?? 'auto';
  switch (name) {
    case 'ts':
    case 'auto':
      return new TsKernels();
    default:
      throw new KiviError(`unknown backend "${String(name)}" (valid: ${BACKENDS.join(', ')})`);
  }
}

export type { Kernels } from './types.js';
