/**
 * WGSL of the dense ops: embedding, RMSNorm, matmul (GEMV and tiled GEMM), RoPE, SwiGLU, add, gather,
 * argmax, random fill, and 16-bit writes at odd offsets. Every kernel takes its parameters from a
 * uniform block (binding 0, dynamic offset) and host arrays from the args buffer (binding 1, `data`).
 *
 * Matmul sums each dot product in one canonical order whatever the number of rows, so a row's result
 * does not depend on the batch (and GEMV and GEMM agree bit for bit): the inner dimension is cut into
 * chunks of 8; slice s (of 32) holds chunks s, s + 32, s + 64, …; each slice is summed with fma in
 * ascending order from 0, and the 32 slice sums are added in order, then the bias. GEMV (up to 512 rows by default)
 * gives a slice to each of 32 lanes (coalesced: the lanes read 32 consecutive chunks) and applies each
 * weight chunk to a block of rows held in registers; GEMM (prefill chunks past that) walks the slices in turn.
 *
 * Weights stay 16-bit words widened with unpack2x16float (exact); all arithmetic is float32, so no
 * `shader-f16` is needed (float16 sums would break the agreement with the reference).
 */
import { KiviError } from '../../util/errors.js';
import { CONVERT, GRID } from './wgsl.js';

export type WType = 'f32' | 'f16' | 'bf16';

/** Chunks of 8 and slices of 32: the canonical summation order (see above). */
export const SLICES = 32;
/** GEMM tile: 64 rows × 64 outputs per workgroup of 16 × 16 threads. */
export const GEMM_TILE = 64;

const P_HEAD = /* wgsl */ `
@group(0) @binding(0) var<uniform> p: P;
`;

/** Storage array declaration of a weight tensor: f32 elements, or 16-bit pairs in u32 words. */
function weightDecl(binding: number, wt: WType, vec: boolean): string {
  if (wt === 'f32') return `@group(0) @binding(${binding}) var<storage, read> w: array<${vec ? 'vec4<f32>' : 'f32'}>;`;
  return `@group(0) @binding(${binding}) var<storage, read> w: array<${vec ? 'vec4<u32>' : 'u32'}>;`;
}

/** WGSL expression of weight element `e` (scalar declaration). */
function weightAt(wt: WType, e: string): string {
  if (wt === 'f32') return `w[${e}]`;
  const conv = wt === 'f16' ? 'f16_to_f32' : 'bf16_to_f32';
  return `${conv}(half_of(w[(${e}) >> 1u], ${e}))`;
}

/**
 * A kernel of one thread per element: parameter fields `params`, storage declarations `decls` (and any
 * functions), and `body` run for each `idx` below `bound` (workgroups of 256 on a grid of any size).
 */
function perElement(params: string, decls: string, bound: string, body: string): string {
  return /* wgsl */ `
struct P { ${params} }
${P_HEAD}
${decls}
${GRID}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let idx = wg_index(wg, nw) * 256u + li;
  if (idx >= ${bound}) { return; }
${body}
}`;
}

// ---- embedding ----------------------------------------------------------------------------------

export function embedWgsl(wt: WType): string {
  return perElement(
    'n: u32, D: u32, ids: u32, row0: u32, row1: u32, base: u32',
    `@group(0) @binding(1) var<storage, read> data: array<u32>;
${weightDecl(2, wt, false)}
@group(0) @binding(3) var<storage, read_write> o: array<f32>;
${CONVERT}`,
    'p.n * p.D',
    `  let r = idx / p.D;
  let i = idx % p.D;
  let id = data[p.ids + r];
  if (id < p.row0 || id >= p.row1) { return; }
  let e = p.base + (id - p.row0) * p.D + i;
  o[idx] = ${weightAt(wt, 'e')};`,
  );
}

// ---- RMSNorm ------------------------------------------------------------------------------------

/** `inplace`: out is x (one read-write binding). */
export function rmsnormWgsl(wt: WType, inplace: boolean): string {
  return /* wgsl */ `
struct P { rows: u32, D: u32, eps: f32 }
${P_HEAD}
${inplace ? '' : '@group(0) @binding(1) var<storage, read> x: array<f32>;'}
${weightDecl(inplace ? 1 : 2, wt, false)}
@group(0) @binding(${inplace ? 2 : 3}) var<storage, read_write> o: array<f32>;
${CONVERT}
${GRID}
var<workgroup> red: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let r = wg_index(wg, nw);
  if (r >= p.rows) { return; }
  let b = r * p.D;
  var s = 0.0;
  for (var i = li; i < p.D; i += 256u) {
    let v = ${inplace ? 'o' : 'x'}[b + i];
    s = fma(v, v, s);
  }
  red[li] = s;
  workgroupBarrier();
  for (var k = 128u; k > 0u; k = k >> 1u) {
    if (li < k) { red[li] = red[li] + red[li + k]; }
    workgroupBarrier();
  }
  let inv = 1.0 / sqrt(red[0] / f32(p.D) + p.eps);
  for (var i = li; i < p.D; i += 256u) {
    let xn = ${inplace ? 'o' : 'x'}[b + i] * inv;
    o[b + i] = ${weightAt(wt, 'i')} * xn;
  }
}`;
}

// ---- matmul -------------------------------------------------------------------------------------

/** A matmul's flags (parameter word 7): add the bias; add the product to what out holds (matmulAdd). */
export const MM_BIAS = 1;
export const MM_ADD = 2;

/**
 * Shared declarations of both matmul kernels: x [rows][inDim] f32, w rows [o0, o1) of a window starting
 * at element `wbase`, bias, out [rows][outDim] (read back under MM_ADD: each output is written by one
 * thread, once). `vec`: inDim % 8 == 0 (chunks are 16- or 32-byte aligned).
 */
function matmulHead(wt: WType, vec: boolean): string {
  const xDecl = `@group(0) @binding(1) var<storage, read> x: array<${vec ? 'vec4<f32>' : 'f32'}>;`;
  // A chunk of 8 weights of output row o (relative to o0), chunk c, into wv; elements past inDim are 0.
  let wchunk: string;
  if (vec && wt === 'f32') {
    wchunk = `
fn wchunk(o: u32, c: u32) -> array<f32, 8> {
  let e = (p.wbase + o * p.inDim + c * 8u) >> 2u;
  let a = w[e];
  let b = w[e + 1u];
  return array<f32, 8>(a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w);
}`;
  } else if (vec) {
    const conv = wt === 'f16' ? 'unpack2x16float' : 'unpack_bf16';
    wchunk = `
fn unpack_bf16(v: u32) -> vec2<f32> {
  return vec2<f32>(bitcast<f32>(v << 16u), bitcast<f32>(v & 0xffff0000u));
}
fn wchunk(o: u32, c: u32) -> array<f32, 8> {
  let q = w[(p.wbase + o * p.inDim + c * 8u) >> 3u];
  let a = ${conv}(q.x);
  let b = ${conv}(q.y);
  let d = ${conv}(q.z);
  let e = ${conv}(q.w);
  return array<f32, 8>(a.x, a.y, b.x, b.y, d.x, d.y, e.x, e.y);
}`;
  } else {
    wchunk = `
fn wchunk(o: u32, c: u32) -> array<f32, 8> {
  var v = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
  for (var e = 0u; e < 8u; e++) {
    let k = c * 8u + e;
    if (k < p.inDim) {
      let i = p.wbase + o * p.inDim + k;
      v[e] = ${weightAt(wt, 'i')};
    }
  }
  return v;
}`;
  }
  const xchunk = vec
    ? `
fn xchunk(r: u32, c: u32) -> array<f32, 8> {
  let e = (r * p.inDim + c * 8u) >> 2u;
  let a = x[e];
  let b = x[e + 1u];
  return array<f32, 8>(a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w);
}`
    : `
fn xchunk(r: u32, c: u32) -> array<f32, 8> {
  var v = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
  for (var e = 0u; e < 8u; e++) {
    let k = c * 8u + e;
    if (k < p.inDim) { v[e] = x[r * p.inDim + k]; }
  }
  return v;
}`;
  return /* wgsl */ `
struct P { rows: u32, inDim: u32, outDim: u32, o0: u32, o1: u32, wbase: u32, chunks: u32, flags: u32, blocks: u32 }
${P_HEAD}
${xDecl}
${weightDecl(2, wt, vec)}
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
${wt === 'f32' ? '' : CONVERT}
${wchunk}
${xchunk}
`;
}

/**
 * The shape of a GEMV dispatch: each workgroup takes `G × OT` consecutive outputs and a block of `R`
 * rows; its G warps of 32 lanes give lane s slice s, so a warp reads each of its OT weight rows in
 * consecutive 16-byte chunks (one coalesced 512-byte read per row and step) and applies every chunk to
 * all R rows from registers: the weights are read once per block of rows. `U` chunks per lane are loaded
 * before they are used (more bytes in flight for one row). Blocks of rows are the fastest-varying
 * workgroup index, so the workgroups that share weight rows run together and the second reads them
 * from the L2 cache.
 */
export interface GemvShape {
  /** Rows per workgroup (a block; rows past the last are computed on the last row and not written). */
  R: number;
  /** Outputs per thread. */
  OT: number;
  /** Chunks per lane loaded at once. */
  U: number;
  /** Warps (of 32 lanes) per workgroup. */
  G: number;
  /**
   * Stage x in workgroup memory, 32 chunks of every row of the block at a time (U is then 1): x comes
   * from L2 once per workgroup instead of once per warp where L1 does not keep it.
   */
  X: boolean;
}

/** GEMV shapes by number of rows: entry i serves rows up to maxRows[i]; past the last, the tiled GEMM. */
export interface GemvTable {
  maxRows: number[];
  shapes: GemvShape[];
}

/**
 * The default table, chosen on an NVIDIA H200 from `bench gemv` at Llama-2-7B's down projection (11008 → 4096,
 * float16) over five candidate tables (docs/perf/webgpu-h200.md): one row, one output a thread and 4 chunks
 * in flight (45 µs, about the streaming bound); 5–8 rows two blocks of 4 (75 µs; one block of 8 took 113 µs:
 * 32 accumulators a thread and fewer workgroups); 9–512 rows blocks of 8 with 4 outputs a thread (91 µs at 16
 * rows, 253 µs at 64, where float32 multiply-adds bound it; blocks of 16 took 160 and 340 µs: register spills).
 * Past 64 rows the blocks still beat the tiled GEMM: 287 vs 698 µs at 65 rows, 474 vs 722 at 128, 0.90 vs
 * 1.06 ms at 256, 1.76 vs 2.78 ms at 512 (docs/perf/h200/gemv-down-gemm65.md, gemv-down-gemv512.md), so the GEMM serves prefill past 512.
 */
export const GEMV_TABLE = '1:1,1,4,8;2:2,1,4,8;4:4,2,2,4;8:4,2,2,4;512:8,4,1,4';

/**
 * A table from its text, `maxRows:R,OT,U,G;…` with maxRows ascending (KIVI_WEBGPU_GEMV, for tuning on
 * a GPU). Limits: R ≤ 32, OT ≤ 8, R × OT ≤ 64 accumulators, U ≤ 8, G ≤ 8 warps, G × R ≤ 64 (the
 * reduction's workgroup memory).
 */
export function parseGemvTable(text: string): GemvTable {
  // A 5th field "x": x staged in workgroup memory (GemvShape.X; R ≤ 16).
  const t: GemvTable = { maxRows: [], shapes: [] };
  const bad = (why: string) => new KiviError(`KIVI_WEBGPU_GEMV "${text}": ${why} (want maxRows:R,OT,U,G[,x];… e.g. ${GEMV_TABLE})`);
  for (const entry of text.split(';')) {
    const m = /^\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*(,\s*x\s*)?$/.exec(entry);
    if (!m) throw bad(`"${entry}" is not maxRows:R,OT,U,G[,x]`);
    const [maxRows, R, OT, U, G] = m.slice(1, 6).map(Number) as [number, number, number, number, number];
    const X = m[6] !== undefined;
    if (maxRows < 1 || maxRows <= (t.maxRows.at(-1) ?? 0)) throw bad('maxRows must rise from 1');
    if (R < 1 || R > (X ? 16 : 32) || OT < 1 || OT > 8 || R * OT > 64 || U < 1 || U > 8 || G < 1 || G > 8 || G * R > 64) {
      throw bad(`${R},${OT},${U},${G} is out of range (R ≤ 32, ≤ 16 with x, OT ≤ 8, R·OT ≤ 64, U ≤ 8, G ≤ 8, G·R ≤ 64)`);
    }
    t.maxRows.push(maxRows);
    t.shapes.push({ R, OT, U: X ? 1 : U, G, X });
  }
  return t;
}

/** The GEMV shape for `rows` rows, or null past the table (the GEMM's rows). */
export function gemvShape(table: GemvTable, rows: number): GemvShape | null {
  const i = table.maxRows.findIndex((m) => rows <= m);
  return i < 0 ? null : table.shapes[i]!;
}

/** GEMV over blocks of rows (see GemvShape); each output's 32 slice sums are added in order at the end. */
export function gemvWgsl(wt: WType, vec: boolean, sh: GemvShape): string {
  const { R, OT, U, G } = sh;
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  // One step of U chunks per lane: the weights of every output, then each row's x chunk applied to all.
  // Constant indices only: a let array indexed at run time is copied to memory on some compilers.
  const step = (u: number) => {
    let code = '';
    for (const k of range(u)) for (const j of range(OT)) code += `\n      let w${k}_${j} = wchunk(o${j}, c + ${32 * k}u);`;
    for (const k of range(u))
      for (const r of range(R)) {
        code += `\n      {\n        let xv = xchunk(x${r}, c + ${32 * k}u);`;
        for (const j of range(OT)) for (let e = 0; e < 8; e++) code += `\n        a${j}_${r} = fma(w${k}_${j}[${e}], xv[${e}], a${j}_${r});`;
        code += '\n      }';
      }
    return code;
  };
  const loops =
    U > 1
      ? `  for (; c + ${32 * (U - 1)}u < p.chunks; c += ${32 * U}u) {${step(U)}
  }
  for (; c < p.chunks; c += 32u) {${step(1)}
  }`
      : `  for (; c < p.chunks; c += 32u) {${step(1)}
  }`;
  const reduce = range(OT)
    .map(
      (j) => `${range(R)
        .map((r) => `  red[(g * ${R}u + ${r}u) * 33u + s] = a${j}_${r};`)
        .join('\n')}
  workgroupBarrier();
  if (li < ${G * R}u) {
    let o = ob + (li / ${R}u) * ${OT}u + ${j}u;
    let row = r0 + li % ${R}u;
    if (o < n && row < p.rows) {
      var sum = 0.0;
      for (var k = 0u; k < 32u; k++) { sum = sum + red[li * 33u + k]; }
      if ((p.flags & ${MM_BIAS}u) != 0u) { sum = sum + bias[p.o0 + o]; }
      if ((p.flags & ${MM_ADD}u) != 0u) { sum = out[row * p.outDim + p.o0 + o] + sum; }
      out[row * p.outDim + p.o0 + o] = sum;
    }
  }${j < OT - 1 ? '\n  workgroupBarrier();' : ''}`,
    )
    .join('\n');
  // x staged: tile t holds chunks [32t, 32t + 32) of the block's rows, the halves of a chunk in two
  // planes (lane s reads 16 consecutive bytes of each: no bank conflicts); red then shares its memory.
  const staged = `  let tiles = (p.chunks + 31u) / 32u;
  for (var t = 0u; t < tiles; t++) {
    for (var i = li; i < ${R * 32}u; i += ${G * 32}u) {
      let cx = t * 32u + i % 32u;
      var v = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
      if (cx < p.chunks) { v = xchunk(min(r0 + i / 32u, p.rows - 1u), cx); }
      xs[i] = vec4<f32>(v[0], v[1], v[2], v[3]);
      xs[${R * 32}u + i] = vec4<f32>(v[4], v[5], v[6], v[7]);
    }
    workgroupBarrier();
    let c = t * 32u + s;
    if (c < p.chunks) {${range(OT)
      .map((j) => `\n      let w0_${j} = wchunk(o${j}, c);`)
      .join('')}${range(R)
      .map(
        (r) => `
      {
        let lo = xs[${r * 32}u + s];
        let hi = xs[${R * 32 + r * 32}u + s];
        let xv = array<f32, 8>(lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w);${range(OT)
          .map((j) =>
            range(8)
              .map((e) => `\n        a${j}_${r} = fma(w0_${j}[${e}], xv[${e}], a${j}_${r});`)
              .join(''),
          )
          .join('')}
      }`,
      )
      .join('')}
    }
    workgroupBarrier();
  }`;
  const redDecl = sh.X
    ? `var<workgroup> xs: array<vec4<f32>, ${Math.max(R * 64, Math.ceil((G * R * 33) / 4))}>;`
    : `var<workgroup> red: array<f32, ${G * R * 33}>;`;
  const redCode = sh.X ? reduce.replace(/red\[([^\]]+)\]/g, (_, i: string) => `xs[(${i}) >> 2u][(${i}) & 3u]`) : reduce;
  return /* wgsl */ `${matmulHead(wt, vec)}
${GRID}
// Slice sums of one output for every row and warp; rows 33 floats apart (no bank conflicts when summed).
${redDecl}
@compute @workgroup_size(${G * 32})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let id = wg_index(wg, nw);
  let r0 = (id % p.blocks) * ${R}u;
  let ob = (id / p.blocks) * ${G * OT}u;
  let g = li / 32u;
  let s = li % 32u;
  let n = p.o1 - p.o0;
${range(OT)
  .map((j) => `  let o${j} = min(ob + g * ${OT}u + ${j}u, n - 1u);`)
  .join('\n')}
${range(R)
  .map((r) => `  let x${r} = min(r0 + ${r}u, p.rows - 1u);`)
  .join('\n')}
${range(OT)
  .flatMap((j) => range(R).map((r) => `  var a${j}_${r} = 0.0;`))
  .join('\n')}
${sh.X ? staged : `  var c = s;\n${loops}`}
${redCode}
}`;
}

/**
 * GEMM: a 64 × 64 tile of (rows, outputs) per workgroup, 4 × 4 per thread, slice by slice, 4 chunks of a
 * slice a step. Each step's chunks are loaded into registers while the step before is computed from
 * workgroup memory (the load's latency hides behind 512 multiply-adds a thread). Row tiles are the
 * fastest-varying workgroup index (p.blocks of them), so the tiles that share weight rows run together
 * and the weights come from memory once.
 */
export function gemmWgsl(wt: WType, vec: boolean): string {
  const zero8 = 'array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)';
  const zero4 = 'array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0))';
  return /* wgsl */ `${matmulHead(wt, vec)}
${GRID}
var<workgroup> xs: array<vec4<f32>, 512>;
var<workgroup> ws: array<vec4<f32>, 512>;
// Chunks in slice s.
fn slice_chunks(s: u32) -> u32 {
  return select(0u, (p.chunks - s + 31u) / 32u, s < p.chunks);
}
// Chunk m of slice s of row r (zeros past the slice or the rows), and of weight row o (absolute).
fn load_x(r: u32, s: u32, m: u32) -> array<f32, 8> {
  if (m < slice_chunks(s) && r < p.rows) { return xchunk(r, s + 32u * m); }
  return ${zero8};
}
fn load_w(o: u32, s: u32, m: u32) -> array<f32, 8> {
  if (m < slice_chunks(s) && o < p.o1) { return wchunk(o - p.o0, s + 32u * m); }
  return ${zero8};
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let id = wg_index(wg, nw);
  let tx = li % 16u;
  let ty = li / 16u;
  let r0 = (id % p.blocks) * 64u;
  let oo = p.o0 + (id / p.blocks) * 64u;
  // The thread loads chunk m0 + q of row/output lr (a warp: 32 consecutive rows, conflict-free stores).
  let lr = li % 64u;
  let q = li / 64u;
  var acc = ${zero4};
  var pp = ${zero4};
  var s = 0u;
  var m0 = 0u;
  var xv = load_x(r0 + lr, s, m0 + q);
  var wv = load_w(oo + lr, s, m0 + q);
  loop {
${Array.from(
  { length: 8 },
  (_, e) => `    xs[(q * 8u + ${e}u) * 16u + lr / 4u][lr % 4u] = xv[${e}];
    ws[(q * 8u + ${e}u) * 16u + lr / 4u][lr % 4u] = wv[${e}];`,
).join('\n')}
    workgroupBarrier();
    // The next step: the slice's next 4 chunks, or the next slice (a slice without chunks takes one empty step).
    var sn = s;
    var mn = m0 + 4u;
    if (mn >= slice_chunks(s)) {
      sn = s + 1u;
      mn = 0u;
    }
    if (sn < 32u) {
      xv = load_x(r0 + lr, sn, mn + q);
      wv = load_w(oo + lr, sn, mn + q);
    }
    for (var k = 0u; k < 32u; k++) {
      let a = xs[k * 16u + ty];
      let b = ws[k * 16u + tx];
      pp[0] = fma(vec4<f32>(a.x), b, pp[0]);
      pp[1] = fma(vec4<f32>(a.y), b, pp[1]);
      pp[2] = fma(vec4<f32>(a.z), b, pp[2]);
      pp[3] = fma(vec4<f32>(a.w), b, pp[3]);
    }
    workgroupBarrier();
    if (sn != s) {
      acc[0] = acc[0] + pp[0];
      acc[1] = acc[1] + pp[1];
      acc[2] = acc[2] + pp[2];
      acc[3] = acc[3] + pp[3];
      pp = ${zero4};
    }
    s = sn;
    m0 = mn;
    if (s >= 32u) { break; }
  }
  for (var i = 0u; i < 4u; i++) {
    let r = r0 + ty * 4u + i;
    if (r >= p.rows) { break; }
    for (var j = 0u; j < 4u; j++) {
      let o = oo + tx * 4u + j;
      if (o < p.o1) {
        var v = acc[i][j];
        if ((p.flags & ${MM_BIAS}u) != 0u) { v = v + bias[o]; }
        if ((p.flags & ${MM_ADD}u) != 0u) { v = out[r * p.outDim + o] + v; }
        out[r * p.outDim + o] = v;
      }
    }
  }
}`;
}

/**
 * One thread per (row, output), the 32 slices in turn: the same canonical order as GEMV and GEMM, so
 * the same bits, without workgroup memory or barriers. For software adapters (SwiftShader runs each
 * barrier of a 256-thread workgroup in ~0.5 ms), where it is many times faster; never on a GPU.
 */
export function matmulSerialWgsl(wt: WType, vec: boolean): string {
  let fmas = '';
  for (let e = 0; e < 8; e++) fmas += `\n        pp = fma(wv[${e}], xv[${e}], pp);`;
  return /* wgsl */ `${matmulHead(wt, vec)}
${GRID}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let n = p.o1 - p.o0;
  let idx = wg_index(wg, nw) * 64u + li;
  if (idx >= p.rows * n) { return; }
  let r = idx / n;
  let o = p.o0 + idx % n;
  var acc = 0.0;
  for (var s = 0u; s < 32u; s++) {
    var pp = 0.0;
    for (var c = s; c < p.chunks; c += 32u) {
      let wv = wchunk(o - p.o0, c);
      let xv = xchunk(r, c);${fmas}
    }
    acc = acc + pp;
  }
  if ((p.flags & ${MM_BIAS}u) != 0u) { acc = acc + bias[o]; }
  if ((p.flags & ${MM_ADD}u) != 0u) { acc = out[r * p.outDim + o] + acc; }
  out[r * p.outDim + o] = acc;
}`;
}

// ---- RoPE, SwiGLU, add, gather ------------------------------------------------------------------

export const ROPE = perElement(
  'rows: u32, half: u32, heads: u32, stride: u32, d: u32, pos: u32',
  `@group(0) @binding(1) var<storage, read> data: array<u32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read> cs: array<f32>;
@group(0) @binding(4) var<storage, read> sn: array<f32>;`,
  'p.rows * p.heads * p.half',
  `  let per = p.heads * p.half;
  let r = idx / per;
  let hd = (idx % per) / p.half;
  let i = idx % p.half;
  let co = data[p.pos + r] * p.half + i;
  let c = cs[co];
  let s = sn[co];
  let b = r * p.stride + hd * p.d;
  let x1 = x[b + i];
  let x2 = x[b + i + p.half];
  x[b + i] = x1 * c - x2 * s;
  x[b + i + p.half] = x2 * c + x1 * s;`,
);

export const SWIGLU = perElement(
  'rows: u32, I: u32',
  `@group(0) @binding(1) var<storage, read> gu: array<f32>;
@group(0) @binding(2) var<storage, read_write> act: array<f32>;`,
  'p.rows * p.I',
  `  let r = idx / p.I;
  let i = idx % p.I;
  let g = gu[r * 2u * p.I + i];
  act[idx] = (g / (1.0 + exp(-g))) * gu[r * 2u * p.I + p.I + i];`,
);

/** x += y; `self`: y is x. */
export function addWgsl(self: boolean): string {
  return perElement(
    'n: u32',
    `@group(0) @binding(1) var<storage, read_write> x: array<f32>;
${self ? '' : '@group(0) @binding(2) var<storage, read> y: array<f32>;'}`,
    'p.n',
    `  x[idx] = x[idx] + ${self ? 'x' : 'y'}[idx];`,
  );
}

export const GATHER = perElement(
  'n: u32, D: u32, rows: u32',
  `@group(0) @binding(1) var<storage, read> data: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;`,
  'p.n * p.D',
  `  let r = idx / p.D;
  o[idx] = x[data[p.rows + r] * p.D + idx % p.D];`,
);

// ---- argmax -------------------------------------------------------------------------------------

/** Index of each row's largest element (the lowest on ties; NaN never wins), as u32. */
export const ARGMAX = /* wgsl */ `
struct P { rows: u32, n: u32 }
${P_HEAD}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
${GRID}
var<workgroup> bv: array<f32, 256>;
var<workgroup> bi: array<u32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let r = wg_index(wg, nw);
  if (r >= p.rows) { return; }
  var best = neg_inf();
  var at = 0xffffffffu;
  for (var i = li; i < p.n; i += 256u) {
    let v = x[r * p.n + i];
    if (v > best) { best = v; at = i; }
  }
  bv[li] = best;
  bi[li] = at;
  workgroupBarrier();
  for (var k = 128u; k > 0u; k = k >> 1u) {
    if (li < k) {
      let v = bv[li + k];
      let j = bi[li + k];
      if (v > bv[li] || (v == bv[li] && j < bi[li])) { bv[li] = v; bi[li] = j; }
    }
    workgroupBarrier();
  }
  if (li == 0u) { ids[r] = select(bi[0], 0u, bi[0] == 0xffffffffu); }
}`;

// ---- random fill --------------------------------------------------------------------------------

/**
 * fillRandom (ops.ts randomFill is the same function in TypeScript): element i gets
 * (Σ of four 22-bit uniforms − their mean) · c, exact in float32, so every back end fills a tensor with
 * the same values; 16-bit tensors are rounded to nearest even.
 */
export function fillRandomWgsl(dtype: 'f32' | 'f16' | 'bf16'): string {
  const to16 = dtype === 'f16' ? 'f32_to_f16' : 'f32_to_bf16';
  // One element a thread (f32), or a word of two.
  const body =
    dtype === 'f32'
      ? '  t[idx] = rnd(idx);'
      : `  let lo = ${to16}(rnd(idx * 2u));
  var hi = 0u;
  if (idx * 2u + 1u < p.n) { hi = ${to16}(rnd(idx * 2u + 1u)); }
  t[idx] = lo | (hi << 16u);`;
  return perElement(
    'n: u32, seed: u32, c: f32',
    `@group(0) @binding(1) var<storage, read_write> t: array<${dtype === 'f32' ? 'f32' : 'u32'}>;
${CONVERT}
fn pcg(v: u32) -> u32 {
  let s = v * 747796405u + 2891336453u;
  let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}
fn rnd(i: u32) -> f32 {
  let u1 = pcg(i ^ pcg(p.seed));
  let u2 = pcg(u1);
  let u3 = pcg(u2);
  let u4 = pcg(u3);
  let s = (u1 >> 10u) + (u2 >> 10u) + (u3 >> 10u) + (u4 >> 10u);
  return (f32(s) - 8388606.0) * p.c;
}`,
    dtype === 'f32' ? 'p.n' : '(p.n + 1u) / 2u',
    body,
  );
}

// ---- 16-bit writes at odd element offsets --------------------------------------------------------

/** Halves [off, off + n) of a u32-word tensor from host halves (the words beyond keep their other half). */
export const SCATTER16 = perElement(
  'off: u32, n: u32, src: u32, w0: u32, words: u32',
  `@group(0) @binding(1) var<storage, read> data: array<u32>;
@group(0) @binding(2) var<storage, read_write> t: array<u32>;
fn src_half(k: u32) -> u32 {
  let w = data[p.src + (k >> 1u)];
  return select(w & 0xffffu, w >> 16u, (k & 1u) != 0u);
}`,
  'p.words',
  `  let w = p.w0 + idx;
  var v = t[w];
  let i0 = w * 2u;
  if (i0 >= p.off && i0 < p.off + p.n) { v = (v & 0xffff0000u) | src_half(i0 - p.off); }
  if (i0 + 1u >= p.off && i0 + 1u < p.off + p.n) { v = (v & 0xffffu) | (src_half(i0 + 1u - p.off) << 16u); }
  t[w] = v;`,
);
