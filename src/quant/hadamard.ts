/**
 * The orthonormal Walsh–Hadamard transform of one head vector (issue 14): H = H_d / √d with H_d the
 * Sylvester Hadamard matrix (H_1 = [1], H_2n = [[H_n, H_n], [H_n, −H_n]]), so H is symmetric and its own
 * inverse, and (Hq)·(Hk) = q·k. Applied to keys before they are quantized (and to the query once per step),
 * it spreads an outlier channel's energy over every channel.
 *
 * Order of operations (what other back ends reproduce): log2(d) butterfly stages with h = 1, 2, 4, …, d/2;
 * in a stage, for each i with (i & h) == 0: (a, b) = (x[i], x[i + h]) → (a + b, a − b), each rounded to
 * float32; then every element is multiplied by fround(1/√d).
 */
import { KiviError } from '../util/errors.js';

export function isPowerOfTwo(d: number): boolean {
  return Number.isInteger(d) && d > 0 && (d & (d - 1)) === 0;
}

export function checkHadamardDim(d: number): void {
  if (!isPowerOfTwo(d)) throw new KiviError(`a Hadamard rotation needs head_dim to be a power of two, got ${d}`);
}

/** In place: x[off .. off + d) ← H·x[off .. off + d). */
export function fwht(x: Float32Array, off: number, d: number): void {
  for (let h = 1; h < d; h <<= 1) {
    for (let i = 0; i < d; i += h << 1) {
      for (let j = off + i; j < off + i + h; j++) {
        const a = x[j]!;
        const b = x[j + h]!;
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
  const s = Math.fround(1 / Math.sqrt(d));
  for (let i = off; i < off + d; i++) x[i] = x[i]! * s;
}

/** fwht() on each of n consecutive head vectors of size d from off. */
export function fwhtHeads(x: Float32Array, off: number, n: number, d: number): void {
  for (let h = 0; h < n; h++) fwht(x, off + h * d, d);
}
