/**
 * How the wasm back end lays out a weight matrix [rows][cols]: rows in tiles of TILE_ROWS, each tile stored
 * input-block-major. For every 16 bytes of a row (8 bf16/f16 inputs, 4 float32) the tile's 8 rows sit side
 * by side, 128 bytes, so the GEMV kernels (assembly/matmul16.ts, matmul.ts), which sum 8 rows at a time,
 * read one sequential stream instead of 8 strided ones. The hardware prefetcher follows one stream much
 * better: on a 2-core AMD EPYC VM a bf16 GEMV over 64 MiB went from 14 to 18 GB/s (`kivi bench gemv`;
 * docs/perf/weights16.md).
 *
 * Only whole tiles are packed, and only where a row is a whole number of 16-byte pieces. A tile occupies
 * exactly the bytes its rows would row-major, so rows from `tiled` on keep their row-major addresses.
 * Callers write and fill a matrix in row-major element order; the back end scatters (`scatterTiled`) and
 * gathers (`readRow`). Arrays here hold the elements' bits: Uint16Array for 16-bit types, Uint32Array for
 * float32.
 */

export const TILE_ROWS = 8;

type Bits = Uint16Array | Uint32Array;

/** Elements per 16-byte piece of a row. */
const block = (a: Bits) => 16 / a.BYTES_PER_ELEMENT;

/** Rows a [rows][cols] matrix of elemBytes-byte elements keeps in tiles (0: row-major throughout). */
export function tiledRows(rows: number, cols: number, elemBytes: number): number {
  return cols % (16 / elemBytes) === 0 ? rows - (rows % TILE_ROWS) : 0;
}

/** dst ← src, src being elements [offset, offset + src.length) of the matrix in row-major order. */
export function scatterTiled(dst: Bits, src: Bits, offset: number, cols: number, tiled: number): void {
  const n = src.length;
  const B = block(dst);
  // Row-major from the first untiled row on (and everything, when nothing is tiled).
  const plainFrom = Math.max(0, Math.min(n, tiled * cols - offset));
  if (plainFrom < n) dst.set(src.subarray(plainFrom), offset + plainFrom);
  // 16-bit pieces move as four 32-bit words where both sides are 4-byte aligned (the usual case).
  const words = B === 8 && src.byteOffset % 4 === 0 && dst.byteOffset % 4 === 0 && offset % 2 === 0;
  const s32 = words ? new Uint32Array(src.buffer, src.byteOffset, src.length >> 1) : null;
  const d32 = words ? new Uint32Array(dst.buffer, dst.byteOffset, dst.length >> 1) : null;
  let r = Math.floor(offset / cols),
    c = offset - r * cols;
  for (let j = 0; j < plainFrom; ) {
    // One row's run of pieces (the first and last may be partial).
    const base = (r - (r % TILE_ROWS)) * cols + (r % TILE_ROWS) * B;
    const end = Math.min(cols, c + (plainFrom - j));
    while (c < end) {
      const b = c - (c % B);
      const take = Math.min(end, b + B) - c;
      const at = base + b * TILE_ROWS + (c - b);
      if (take === 8 && s32 !== null && d32 !== null) {
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
export function readRow(src: Bits, r: number, cols: number, tiled: number, dst: Bits, dstOffset: number): void {
  if (r >= tiled) {
    dst.set(src.subarray(r * cols, (r + 1) * cols), dstOffset);
    return;
  }
  const B = block(src);
  const base = (r - (r % TILE_ROWS)) * cols + (r % TILE_ROWS) * B;
  for (let b = 0; b < cols; b += B) {
    const at = base + b * TILE_ROWS;
    for (let k = 0; k < B; k++) dst[dstOffset + b + k] = src[at + k]!;
  }
}
