/**
 * Where a prompt's prefill chunks end. A chunk ends at the next multiple of each grid (a `--prefill-chunk`,
 * a prefix-cache block) or at the prompt's end, so the chunk boundaries are a function of positions
 * alone: two requests sharing a prefix build it with the same steps, and so the same cache bit for bit.
 */
import { KiviError } from '../util/errors.js';

/** The end of the chunk that starts at token `from` of a `total`-token prompt. */
export function nextChunkEnd(from: number, total: number, grids: readonly number[]): number {
  let end = total;
  for (const g of grids) end = Math.min(end, (Math.floor(from / g) + 1) * g);
  return end;
}

/** Every chunk end from `from` (tokens already in the cache) to `total`, in order; [] when nothing is left. */
export function chunkEnds(from: number, total: number, grids: readonly number[]): number[] {
  const ends: number[] = [];
  for (let t = from; t < total; t = ends[ends.length - 1]!) ends.push(nextChunkEnd(t, total, grids));
  return ends;
}

export function checkGrid(n: number, what: string): number {
  if (!Number.isInteger(n) || n < 1) throw new KiviError(`${what} must be an integer ≥ 1, got ${n}`);
  return n;
}
