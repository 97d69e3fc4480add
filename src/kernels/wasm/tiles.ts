/**
 * How the wasm back end lays out a 16-bit weight matrix [rows][cols]: rows in tiles of TILE_ROWS, each tile
 * stored input-block-major. For every 8 inputs (16 bytes of a row) the tile's 8 rows sit side by side, 128
 * bytes, so the GEMV kernel (assembly/matmul16.ts), which sums 8 rows at a time, reads one sequential
 * stream instead of 8 strided ones. The hardware prefetcher follows one stream much better: on a 2-core
 * AMD EPYC VM, `kivi bench gemv` over 64 MiB of bf16 went from 14.8–15.2 to 17.5–18.1 GB/s
 * (docs/perf/weights-tiled.md).
 *
 * Only whole tiles are packed, and only where cols is a multiple of 8. A tile occupies exactly the bytes
 * its rows would row-major, so rows from `tiled` on keep their row-major addresses. Callers write and fill
 * a matrix in row-major element order; the back end scatters (`scatterTiled`) and gathers (`readRow`).
 */

export const TILE_ROWS = 8;
/** Inputs per row in each 16-byte piece of a tile. */
const BLOCK = 8;

/** Rows a [rows][cols] 16-bit matrix keeps in tiles (0: row-major throughout). */
export function tiledRows(rows: number, cols: number): number {
  return cols % BLOCK === 0 ? rows - (rows % TILE_ROWS) : 0;
}

/** dst ← src, src being elements [offset, offset + src.length) of the matrix in row-major order. */
export function scatterTiled(dst: Uint16Array, src: Uint16Array, offset: number, cols: number, tiled: number): void {
  const n = src.length;
  // Row-major from the first untiled row on (and everything, when nothing is tiled).
  const plainFrom = Math.max(0, Math.min(n, tiled * cols - offset));
  if (plainFrom < n) dst.set(src.subarray(plainFrom), offset + plainFrom);
  let r = Math.floor(offset / cols),
    c = offset - r * cols;
  // Whole 8-input pieces move as four 32-bit words where both sides are 4-byte aligned (the usual case).
  const words = src.byteOffset % 4 === 0 && dst.byteOffset % 4 === 0 && offset % 2 === 0;
  const s32 = words ? new Uint32Array(src.buffer, src.byteOffset, src.length >> 1) : null;
  const d32 = words ? new Uint32Array(dst.buffer, dst.byteOffset, dst.length >> 1) : null;
  for (let j = 0; j < plainFrom; ) {
    // One row's run of 8-input pieces (the first and last may be partial).
    const base = (r - (r % TILE_ROWS)) * cols + (r % TILE_ROWS) * BLOCK;
    const end = Math.min(cols, c + (plainFrom - j));
    while (c < end) {
      const b = c - (c % BLOCK);
      const take = Math.min(end, b + BLOCK) - c;
      const at = base + b * TILE_ROWS + (c - b);
      if (take === BLOCK && s32 !== null && d32 !== null) {
        const sw = j >> 1,
          dw = at >> 1;
        d32[dw] = s32[sw]!;
        d32[dw + 1] = s32[sw + 1]!;
        d32[dw + 2] = s32[sw + 2]!;
        d32[dw + 3] = s32[sw + 3]!;
      } else {
        for (let k = 0; k < take; k++) dst[at + k] = src[j + k]!;
      }
      j += take;
      c += take;
    }
    if (c === cols) {
      c = 0;
      r++;
    }
  }
}

/** Row r of the matrix, row-major, into dst from dstOffset. */
export function readRow(src: Uint16Array, r: number, cols: number, tiled: number, dst: Uint16Array, dstOffset: number): void {
  if (r >= tiled) {
    dst.set(src.subarray(r * cols, (r + 1) * cols), dstOffset);
    return;
  }
  const base = (r - (r % TILE_ROWS)) * cols + (r % TILE_ROWS) * BLOCK;
  for (let b = 0; b < cols; b += BLOCK) {
    const at = base + b * TILE_ROWS;
    for (let k = 0; k < BLOCK; k++) dst[dstOffset + b + k] = src[at + k]!;
  }
}

/** A row-major copy of a matrix with `tiled` packed rows (for readers outside the kernels: tests, tools). */
export function untiled(src: Uint16Array, cols: number, tiled: number): Uint16Array {
  const out = src.slice();
  for (let r = 0; r < tiled; r++) readRow(src, r, cols, tiled, out, r * cols);
  return out;
}
