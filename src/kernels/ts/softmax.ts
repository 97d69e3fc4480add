/** The reference softmax. */

/** Softmax in place over row[off .. off+n). */
export function softmaxInPlace(row: Float32Array, off: number, n: number): void {
  let max = -Infinity;
  for (let i = off; i < off + n; i++) if (row[i]! > max) max = row[i]!;
  let sum = 0;
  for (let i = off; i < off + n; i++) {
    const e = Math.exp(row[i]! - max);
    row[i] = e;
    sum += e;
  }
  const inv = 1 / sum;
  for (let i = off; i < off + n; i++) row[i] = row[i]! * inv;
}
