/**
 * WGSL of the cache work of a step plan, generated for one model shape (heads, kv heads, head size):
 *
 *  - attend: one workgroup per work item = (task, kv head, a run of the task's tokens). Tokens go in
 *    tiles of 128: every thread scores one token for all the kv head's query heads, the tile's maximum
 *    and the running sums are updated (online softmax, one pass), then the values are weighted, each
 *    thread owning CH channels of a stripe of the tile's tokens. A task too long for one workgroup is
 *    split over many (flash-decoding): each writes its partial maximum, sum and output, and `merge`
 *    combines them. All tasks and kv heads of a sub-step are one dispatch (plus one merge).
 *  - KIVI keys are scored on their packed codes: the query is multiplied by the group's scales once per
 *    group and tile (in workgroup memory), q·k̂ = Σ_c (q_c·s_c)·code_c + Σ_c q_c·m_c. KIVI values are
 *    weighted on their codes: Σ_t p_t·(s_t·code + m_t) = Σ_t (p_t·s_t)·code + Σ_t p_t·m_t. Nothing is
 *    dequantized into memory. A code c is read as the float 1 + c·2^-b (its bits OR'ed into the mantissa
 *    of 1.0, two integer ops, no conversion); the 1's are subtracted once per group through the folded
 *    sums (Σ qs, Σ p·s).
 *  - jobs: one workgroup per (job, kv head): store new tokens into float32/float16 pages, quantize a key
 *    block per channel, quantize value tokens per token (bit-exact with quant/quantizer.ts: exact float16
 *    rounding and a correctly rounded division; see wgsl.ts).
 *
 * Records come from one storage buffer per plan (planbuf.ts); pages live in up to ARENAS buffers per
 * layer (pool.ts), selected by the slot in each segment record.
 */
import {
  JOB_QKEY, JOB_QVAL, JOB_STORE, JOB_VALUES, SEG_F16, SEG_F32, SEG_KIVI_K, SEG_KIVI_V, SEG_ROWS,
} from '../layout.js';
import type { AttnShape } from '../types.js';
import { CONVERT, DIVIDE, GRID, f32lit } from './wgsl.js';

/** Arena buffers (bindings) per layer. */
export const ARENAS = 4;
/** Threads per attention workgroup = tokens per tile. */
export const TILE = 128;
/** Words per GPU segment record: kind | bits << 8 | slot << 16, n, base word (or first row), t0, cap, G, section words, start. */
export const GSEG_WORDS = 8;
/** Words per GPU task record: row, k0, kn, v0, vn, tokens, KIVI key tokens, value bits | G << 8. */
export const GTASK_WORDS = 8;
/** Words per attention work item: task, kv head, first token, end token, key segment, value segment, partial (or NONE). */
export const ITEM_WORDS = 8;
/** Words per merge item: task, kv head, first partial, partials. */
export const MERGE_WORDS = 4;
/** Words per job item: job, kv head. */
export const JOBITEM_WORDS = 2;
export const NO_PARTIAL = 0xffffffff;

export interface AttnGeometry {
  /** Query heads per kv head. */
  nq: number;
  /** Channels per thread in the value phase (CH · nq ≤ 32 accumulators). */
  ch: number;
  /** Key groups whose folded query fits in workgroup memory at once. */
  slots: number;
  /** Floats of the shared scratch. */
  shared: number;
}

/** How the attention kernel is laid out for a shape, given the workgroup memory the device allows. */
export function attnGeometry(shape: AttnShape, workgroupBytes: number): AttnGeometry {
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const nq = H / KV;
  const ch = nq <= 2 ? 16 : nq <= 4 ? 8 : 4;
  const lanes = Math.floor(TILE / (D / ch));
  const head = nq * D + nq * TILE;
  const fold = (s: number) => s * nq * 2 + s * nq * (D / 16) * 2;
  const fixed = (s: number) => Math.max(head + fold(s), lanes * nq * D);
  let slots = 16;
  while (slots > 1 && (fixed(slots) + slots * nq * D) * 4 > workgroupBytes) slots--;
  if ((fixed(slots) + slots * nq * D) * 4 > workgroupBytes) {
    throw new Error(`webgpu: attention for ${nq} query heads per kv head of ${D} needs more workgroup memory than ${workgroupBytes} bytes`);
  }
  return { nq, ch, slots, shared: fixed(slots) };
}

const ARENA_READ = (ty: string, access: 'read' | 'read_write', first: number) => {
  let s = '';
  for (let i = 0; i < ARENAS; i++) s += `@group(0) @binding(${first + i}) var<storage, ${access}> a${i}: array<${ty}>;\n`;
  return s;
};

/** The value of a b-bit code at position k of a word, as the float 1 + code·2^-b. */
function magic(word: string, bits: number, k: number): string {
  const sh = 23 - bits - bits * k;
  const mask = (((1 << bits) - 1) << (23 - bits)) >>> 0;
  const moved = sh >= 0 ? `(${word} << ${sh}u)` : `(${word} >> ${-sh}u)`;
  return `bitcast<f32>(0x3f800000u | (${moved} & 0x${mask.toString(16)}u))`;
}

export function attendWgsl(shape: AttnShape, g: AttnGeometry): string {
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const { nq: NQ, ch: CH, slots: NS } = g;
  const QKVD = (H + 2 * KV) * D;
  const CHUNKS = D / CH;
  const LANES = Math.floor(TILE / CHUNKS);
  const D16 = D / 16;
  const QOFF = 0, SCOFF = NQ * D, FBOFF = SCOFF + NQ * TILE, FPOFF = FBOFF + NS * NQ * 2;
  const js = (f: (j: number) => string) => Array.from({ length: NQ }, (_, j) => f(j)).join('\n');

  // Scores of one token against a KIVI key row of `bits` bits: S[j] = Σ qs_jc·(1 + code·2^-b).
  const kiviScore = (bits: number) => {
    const cpw = 32 / bits;
    const wpr = (D * bits) / 32;
    let body = '';
    const perWord = (word: string, wi: string) => {
      let s = '';
      for (let k = 0; k < cpw; k += 4) {
        s += `        { let c4 = fb + (${wi}) * ${cpw / 4}u + ${k / 4}u;\n`;
        for (let e = 0; e < 4; e++) s += `          let v${e} = ${magic(word, bits, k + e)};\n`;
        s += js((j) => `          { let q = fq[c4 + ${j * (D / 4)}u]; S${j} = fma(q.x, v0, fma(q.y, v1, fma(q.z, v2, fma(q.w, v3, S${j})))); }`) + '\n';
        s += '        }\n';
      }
      return s;
    };
    if (wpr % 4 === 0) {
      body += `      for (var wq = 0u; wq < ${wpr / 4}u; wq++) {\n        let q4 = ld4(sl, (row >> 2u) + wq);\n`;
      for (let e = 0; e < 4; e++) body += `        { let wd = q4[${e}];\n${perWord('wd', `wq * 4u + ${e}u`)}        }\n`;
      body += '      }\n';
    } else {
      body += `      for (var wi = 0u; wi < ${wpr}u; wi++) {\n        let wd = ldw(sl, row + wi);\n${perWord('wd', 'wi')}      }\n`;
    }
    return `    if (kbits == ${bits}u) {\n      let row = kb0 + (st0 + t - kst) * ${wpr}u;\n${body}    }\n`;
  };

  // Value accumulation of one token from a KIVI value row of `bits` bits (one group per thread chunk).
  const kiviValue = (bits: number) => {
    const cpw = 32 / bits;
    const wpr = (D * bits) / 32;
    let s = `      if (vb == ${bits}u) {\n        let row = vrow * ${wpr}u;\n`;
    // The chunk's codes: CH channels starting at c0, within ceil(CH·bits/32) words.
    const words = Math.max(1, (CH * bits) / 32);
    for (let wi = 0; wi < words; wi++) s += `        let w${wi} = ldw(sl, vbase + row + (c0 * ${bits}u) / 32u + ${wi}u) >> ((c0 % ${cpw}u) * ${bits}u * ${CH * bits < 32 ? 1 : 0}u);\n`;
    for (let k = 0; k < CH; k++) {
      const wi = Math.floor((k * bits) / 32);
      const kk = k % cpw;
      s += `        let m${k} = ${magic(`w${wi}`, bits, kk)};\n`;
    }
    s += js((j) => {
      let t = `        { let ws = pp[${j}] * sv; let wm = pp[${j}] * mv; W[${j}] += ws; B[${j}] += wm;\n`;
      for (let k = 0; k < CH; k++) t += `          acc[${j * CH + k}] = fma(ws, m${k}, acc[${j * CH + k}]);\n`;
      return t + '        }';
    }) + '\n';
    return s + '      }\n';
  };

  return /* wgsl */ `
const WG = ${TILE}u;
const D = ${D}u;
const NQ = ${NQ}u;
const NS = ${NS}u;
const D16 = ${D16}u;
const QKVD = ${QKVD}u;
const CHUNKS = ${CHUNKS}u;
const LANES = ${LANES}u;
const SCALE = ${f32lit(1 / Math.sqrt(D))};
struct P { items: u32, n: u32, tasks: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> plan: array<u32>;
@group(0) @binding(2) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> att: array<f32>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
${ARENA_READ('vec4<u32>', 'read', 5)}
${CONVERT}
${GRID}
var<workgroup> sh: array<f32, ${g.shared}>;
var<workgroup> fq: array<vec4<f32>, ${(NS * NQ * D) / 4}>;
var<workgroup> ml: array<f32, ${LANES * NQ}>;

fn ld4(s: u32, i: u32) -> vec4<u32> {
  switch s {
    case 1u: { return a1[i]; }
    case 2u: { return a2[i]; }
    case 3u: { return a3[i]; }
    default: { return a0[i]; }
  }
}
fn ldw(s: u32, i: u32) -> u32 { return ld4(s, i >> 2u)[i & 3u]; }
fn ldh(s: u32, hi: u32) -> f32 { return f16_to_f32(half_of(ldw(s, hi >> 1u), hi)); }
fn qf(i: u32) -> f32 { return qkv[i >> 2u][i & 3u]; }
fn sw(s: u32, k: u32) -> u32 { return plan[s * ${GSEG_WORDS}u + k]; }
fn seg_end(s: u32) -> u32 { return sw(s, 7u) + sw(s, 1u); }

@compute @workgroup_size(${TILE})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let it = wg_index(wid, nw);
  if (it >= p.n) { return; }
  let ib = p.items + it * ${ITEM_WORDS}u;
  let task = plan[ib];
  let h = plan[ib + 1u];
  let ta = plan[ib + 2u];
  let tb = plan[ib + 3u];
  var kseg = plan[ib + 4u];
  var vseg = plan[ib + 5u];
  let pidx = plan[ib + 6u];
  let tk = p.tasks + task * ${GTASK_WORDS}u;
  let qrow = plan[tk];
  let kb = plan[tk + 6u];
  let vinfo = plan[tk + 7u];
  let vbits = vinfo & 0xffu;
  let vG = vinfo >> 8u;
  var kbits = 0u;
  var kG = 1u;
  if (kb > 0u) {
    kbits = (sw(plan[tk + 1u], 0u) >> 8u) & 0xffu;
    kG = sw(plan[tk + 1u], 5u);
  }
  let kmul = f32(1u << kbits);
  let vmul = f32(1u << vbits);
  let vinv = 1.0 / vmul;
  for (var i = li; i < NQ * D; i += WG) { sh[${QOFF}u + i] = qf(qrow * QKVD + h * NQ * D + i); }
  var m: array<f32, ${NQ}>;
  var l: array<f32, ${NQ}>;
  var acc: array<f32, ${NQ * CH}>;
  var W: array<f32, ${NQ}>;
  var B: array<f32, ${NQ}>;
  for (var j = 0u; j < NQ; j++) {
    m[j] = neg_inf();
    l[j] = 0.0;
    W[j] = 0.0;
    B[j] = 0.0;
  }
  for (var k = 0u; k < ${NQ * CH}u; k++) { acc[k] = 0.0; }
  let cw = li % CHUNKS;
  let u = li / CHUNKS;
  let c0 = cw * ${CH}u;
  workgroupBarrier();
  for (var a = ta; a < tb; a += WG) {
    let b = min(a + WG, tb);
    loop { if (a < seg_end(kseg)) { break; } kseg += 1u; }
    loop { if (a < seg_end(vseg)) { break; } vseg += 1u; }
    let t = a + li;
    var s: array<f32, ${NQ}>;
    for (var j = 0u; j < NQ; j++) { s[j] = neg_inf(); }
    // ---- KIVI keys, on their codes ----
    if (a < kb) {
      let g0 = a / kG;
      let ng = (min(b, kb) - 1u) / kG - g0 + 1u;
      for (var ps = 0u; ps < ng; ps += NS) {
        let nsl = min(NS, ng - ps);
        // Fold the query with each group's scales; partial Σ qs and Σ q·m per 16 channels.
        for (var idx = li; idx < nsl * NQ * D16; idx += WG) {
          let slot = idx / (NQ * D16);
          let j = (idx / D16) % NQ;
          let cb = (idx % D16) * 16u;
          let tok = (g0 + ps + slot) * kG;
          var sg = kseg;
          loop { if (tok < seg_end(sg)) { break; } sg += 1u; }
          let info = sw(sg, 0u);
          let sl = info >> 16u;
          let wpr = D * ((info >> 8u) & 0xffu) / 32u;
          let cap = sw(sg, 4u);
          let base = sw(sg, 2u) + h * sw(sg, 6u);
          let gi = (sw(sg, 3u) + tok - sw(sg, 7u)) / kG;
          let hs = (base + cap * wpr) * 2u + gi * D + cb;
          let hm = hs + (cap / kG) * D;
          var pq = 0.0;
          var pb = 0.0;
          for (var k = 0u; k < 16u; k += 4u) {
            var q4: vec4<f32>;
            for (var e = 0u; e < 4u; e++) {
              let c = cb + k + e;
              let qc = sh[${QOFF}u + j * D + c];
              let qs = qc * ldh(sl, hs + k + e);
              q4[e] = qs;
              pq += qs;
              pb = fma(qc, ldh(sl, hm + k + e), pb);
            }
            fq[((slot * NQ + j) * D + cb + k) / 4u] = q4;
          }
          sh[${FPOFF}u + idx * 2u] = pq;
          sh[${FPOFF}u + idx * 2u + 1u] = pb;
        }
        workgroupBarrier();
        for (var idx = li; idx < nsl * NQ; idx += WG) {
          var sq = 0.0;
          var sb = 0.0;
          for (var k = 0u; k < D16; k++) {
            sq += sh[${FPOFF}u + (idx * D16 + k) * 2u];
            sb += sh[${FPOFF}u + (idx * D16 + k) * 2u + 1u];
          }
          sh[${FBOFF}u + idx * 2u] = sq;
          sh[${FBOFF}u + idx * 2u + 1u] = sb;
        }
        workgroupBarrier();
        if (t < b && t < kb) {
          let gg = t / kG;
          if (gg >= g0 + ps && gg < g0 + ps + nsl) {
            let slot = gg - g0 - ps;
            var sg = kseg;
            loop { if (t < seg_end(sg)) { break; } sg += 1u; }
            let sl = sw(sg, 0u) >> 16u;
            let kb0 = sw(sg, 2u) + h * sw(sg, 6u);
            let st0 = sw(sg, 3u);
            let kst = sw(sg, 7u);
            let fb = slot * NQ * ${D / 4}u;
${js((j) => `            var S${j} = 0.0;`)}
${kiviScore(2)}${kiviScore(4)}${kiviScore(8)}
${js((j) => `            s[${j}] = (kmul * (S${j} - sh[${FBOFF}u + (slot * NQ + ${j}u) * 2u]) + sh[${FBOFF}u + (slot * NQ + ${j}u) * 2u + 1u]) * SCALE;`)}
          }
        }
        workgroupBarrier();
      }
    }
    // ---- full-precision keys: float32/float16 pages and the step's own rows ----
    if (t < b && t >= kb) {
      var sg = kseg;
      loop { if (t < seg_end(sg)) { break; } sg += 1u; }
      let info = sw(sg, 0u);
      let kind = info & 0xffu;
      let sl = info >> 16u;
      let r = sw(sg, 3u) + t - sw(sg, 7u);
${js((j) => `      var S${j} = 0.0;`)}
      if (kind == ${SEG_ROWS}u) {
        let o4 = ((sw(sg, 2u) + t - sw(sg, 7u)) * QKVD + (${H}u + h) * D) / 4u;
        for (var c4 = 0u; c4 < ${D / 4}u; c4++) {
          let kv = qkv[o4 + c4];
${js((j) => `          S${j} += dot(kv, vec4<f32>(sh[${QOFF + j * D}u + c4 * 4u], sh[${QOFF + j * D + 1}u + c4 * 4u], sh[${QOFF + j * D + 2}u + c4 * 4u], sh[${QOFF + j * D + 3}u + c4 * 4u]));`)}
        }
      } else if (kind == ${SEG_F32}u) {
        let o4 = (sw(sg, 2u) + h * sw(sg, 6u) + r * D) / 4u;
        for (var c4 = 0u; c4 < ${D / 4}u; c4++) {
          let kv = bitcast<vec4<f32>>(ld4(sl, o4 + c4));
${js((j) => `          S${j} += dot(kv, vec4<f32>(sh[${QOFF + j * D}u + c4 * 4u], sh[${QOFF + j * D + 1}u + c4 * 4u], sh[${QOFF + j * D + 2}u + c4 * 4u], sh[${QOFF + j * D + 3}u + c4 * 4u]));`)}
        }
      } else if (kind == ${SEG_F16}u) {
        let o4 = (sw(sg, 2u) + h * sw(sg, 6u) + r * ${D / 2}u) / 4u;
        for (var c8 = 0u; c8 < ${D / 8}u; c8++) {
          let w4 = ld4(sl, o4 + c8);
          let k0 = vec4<f32>(unpack2x16float(w4.x), unpack2x16float(w4.y));
          let k1 = vec4<f32>(unpack2x16float(w4.z), unpack2x16float(w4.w));
          let c = c8 * 8u;
${js((j) => `          S${j} += dot(k0, vec4<f32>(sh[${QOFF + j * D}u + c], sh[${QOFF + j * D + 1}u + c], sh[${QOFF + j * D + 2}u + c], sh[${QOFF + j * D + 3}u + c])) + dot(k1, vec4<f32>(sh[${QOFF + j * D + 4}u + c], sh[${QOFF + j * D + 5}u + c], sh[${QOFF + j * D + 6}u + c], sh[${QOFF + j * D + 7}u + c]));`)}
        }
      }
${js((j) => `      s[${j}] = S${j} * SCALE;`)}
    }
    // ---- scores to the value threads ----
    for (var j = 0u; j < NQ; j++) { sh[${SCOFF}u + j * WG + li] = s[j]; }
    workgroupBarrier();
    // ---- values: this thread's CH channels of tokens u, u + LANES, … of the tile ----
    var pp: array<f32, ${NQ}>;
    if (u < LANES) {
      var vs = vseg;
      for (var tt = u; tt < b - a; tt += LANES) {
        let t2 = a + tt;
        loop { if (t2 < seg_end(vs)) { break; } vs += 1u; }
        // Online softmax per value thread: its own running maximum and sum (lanes merge at the end).
        for (var j = 0u; j < NQ; j++) {
          let sv = sh[${SCOFF}u + j * WG + tt];
          if (sv > m[j]) {
            let al = exp(m[j] - sv);
            m[j] = sv;
            l[j] = l[j] * al;
            W[j] = W[j] * al;
            B[j] = B[j] * al;
            for (var k = 0u; k < ${CH}u; k++) { acc[j * ${CH}u + k] = acc[j * ${CH}u + k] * al; }
          }
          pp[j] = exp(sv - m[j]);
          l[j] = l[j] + pp[j];
        }
        let info = sw(vs, 0u);
        let kind = info & 0xffu;
        let sl = info >> 16u;
        let vrow = sw(vs, 3u) + t2 - sw(vs, 7u);
        if (kind == ${SEG_KIVI_V}u) {
          let vb = (info >> 8u) & 0xffu;
          let G = sw(vs, 5u);
          let cap = sw(vs, 4u);
          let vbase = sw(vs, 2u) + h * sw(vs, 6u);
          let wpr = D * vb / 32u;
          let hs = (vbase + cap * wpr) * 2u + vrow * (D / G);
          let hm = hs + cap * (D / G);
          if (G % ${CH}u == 0u) {
            let sv = ldh(sl, hs + c0 / G);
            let mv = ldh(sl, hm + c0 / G);
${kiviValue(2)}${kiviValue(4)}${kiviValue(8)}
          } else {
            // Groups narrower than a thread's chunk: dequantize channel by channel (exact values, no folding).
            let mask = (1u << vb) - 1u;
            for (var k = 0u; k < ${CH}u; k++) {
              let c = c0 + k;
              let wd = ldw(sl, vbase + vrow * wpr + c * vb / 32u);
              let code = f32((wd >> ((c % (32u / vb)) * vb)) & mask);
              let v = (ldh(sl, hs + c / G) * code + ldh(sl, hm + c / G)) * vinv;
              for (var j = 0u; j < NQ; j++) { acc[j * ${CH}u + k] = fma(pp[j], v, acc[j * ${CH}u + k]); }
            }
          }
        } else if (kind == ${SEG_F32}u) {
          let o4 = (sw(vs, 2u) + h * sw(vs, 6u) + vrow * D + c0) / 4u;
          for (var k4 = 0u; k4 < ${CH / 4}u; k4++) {
            let v = bitcast<vec4<f32>>(ld4(sl, o4 + k4)) * vinv;
            for (var j = 0u; j < NQ; j++) {
              for (var e = 0u; e < 4u; e++) { acc[j * ${CH}u + k4 * 4u + e] = fma(pp[j], v[e], acc[j * ${CH}u + k4 * 4u + e]); }
            }
          }
        } else if (kind == ${SEG_F16}u) {
          let ow = sw(vs, 2u) + h * sw(vs, 6u) + (vrow * D + c0) / 2u;
          for (var k2 = 0u; k2 < ${CH / 2}u; k2++) {
            let v = unpack2x16float(ldw(sl, ow + k2)) * vinv;
            for (var j = 0u; j < NQ; j++) {
              acc[j * ${CH}u + k2 * 2u] = fma(pp[j], v.x, acc[j * ${CH}u + k2 * 2u]);
              acc[j * ${CH}u + k2 * 2u + 1u] = fma(pp[j], v.y, acc[j * ${CH}u + k2 * 2u + 1u]);
            }
          }
        } else {
          let o4 = ((sw(vs, 2u) + t2 - sw(vs, 7u)) * QKVD + (${H + KV}u + h) * D + c0) / 4u;
          for (var k4 = 0u; k4 < ${CH / 4}u; k4++) {
            let v = qkv[o4 + k4] * vinv;
            for (var j = 0u; j < NQ; j++) {
              for (var e = 0u; e < 4u; e++) { acc[j * ${CH}u + k4 * 4u + e] = fma(pp[j], v[e], acc[j * ${CH}u + k4 * 4u + e]); }
            }
          }
        }
      }
    }
    workgroupBarrier();
  }
  // ---- merge the value threads' partial softmaxes, then the output (or this split's partial) ----
  if (u < LANES && cw == 0u) {
    for (var j = 0u; j < NQ; j++) { ml[u * NQ + j] = m[j]; }
  }
  workgroupBarrier();
  var M: array<f32, ${NQ}>;
  for (var j = 0u; j < NQ; j++) {
    M[j] = neg_inf();
    for (var uu = 0u; uu < LANES; uu++) { M[j] = max(M[j], ml[uu * NQ + j]); }
  }
  workgroupBarrier();
  if (u < LANES) {
    for (var j = 0u; j < NQ; j++) {
      let e = exp(m[j] - M[j]);
      for (var k = 0u; k < ${CH}u; k++) {
        sh[(u * NQ + j) * D + c0 + k] = (vmul * (acc[j * ${CH}u + k] - W[j]) + B[j]) * e;
      }
      if (cw == 0u) { ml[u * NQ + j] = l[j] * e; }
    }
  }
  workgroupBarrier();
  for (var idx = li; idx < NQ * D; idx += WG) {
    let j = idx / D;
    let c = idx % D;
    var o = 0.0;
    var L = 0.0;
    for (var uu = 0u; uu < LANES; uu++) {
      o += sh[(uu * NQ + j) * D + c];
      L += ml[uu * NQ + j];
    }
    if (pidx == ${NO_PARTIAL}u) {
      att[qrow * ${H * D}u + (h * NQ + j) * D + c] = o / L;
    } else {
      let pb = pidx * ${NQ * (D + 2)}u + j * ${D + 2}u;
      part[pb + 2u + c] = o;
      if (c == 0u) {
        part[pb] = M[j];
        part[pb + 1u] = L;
      }
    }
  }
}`;
}

/** Combine the partials of the splits of each (task, kv head). */
export function mergeWgsl(shape: AttnShape): string {
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const NQ = H / KV;
  return /* wgsl */ `
struct P { items: u32, n: u32, tasks: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> plan: array<u32>;
@group(0) @binding(2) var<storage, read> part: array<f32>;
@group(0) @binding(3) var<storage, read_write> att: array<f32>;
${GRID}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let it = wg_index(wid, nw);
  if (it >= p.n) { return; }
  let ib = p.items + it * ${MERGE_WORDS}u;
  let row = plan[p.tasks + plan[ib] * ${GTASK_WORDS}u];
  let h = plan[ib + 1u];
  let p0 = plan[ib + 2u];
  let np = plan[ib + 3u];
  for (var idx = li; idx < ${NQ * D}u; idx += 64u) {
    let j = idx / ${D}u;
    let c = idx % ${D}u;
    var mx = neg_inf();
    for (var s = 0u; s < np; s++) { mx = max(mx, part[(p0 + s) * ${NQ * (D + 2)}u + j * ${D + 2}u]); }
    var L = 0.0;
    var O = 0.0;
    for (var s = 0u; s < np; s++) {
      let b = (p0 + s) * ${NQ * (D + 2)}u + j * ${D + 2}u;
      let e = exp(part[b] - mx);
      L = fma(part[b + 1u], e, L);
      O = fma(part[b + 2u + c], e, O);
    }
    att[row * ${H * D}u + (h * ${NQ}u + j) * ${D}u + c] = O / L;
  }
}`;
}

/** The cache jobs of one phase: store, quantize key blocks, quantize value tokens. */
export function jobsWgsl(shape: AttnShape): string {
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const QKVD = (H + 2 * KV) * D;
  return /* wgsl */ `
const D = ${D}u;
const WG = 128u;
struct P { items: u32, n: u32, jobs: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> plan: array<u32>;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
${ARENA_READ('u32', 'read_write', 3)}
${CONVERT}
${DIVIDE}
${GRID}
var<workgroup> gs: array<f32, ${D}>;
var<workgroup> gm: array<f32, ${D}>;

fn lda(s: u32, i: u32) -> u32 {
  switch s {
    case 1u: { return a1[i]; }
    case 2u: { return a2[i]; }
    case 3u: { return a3[i]; }
    default: { return a0[i]; }
  }
}
fn sta(s: u32, i: u32, v: u32) {
  switch s {
    case 1u: { a1[i] = v; }
    case 2u: { a2[i] = v; }
    case 3u: { a3[i] = v; }
    default: { a0[i] = v; }
  }
}
fn sw(s: u32, k: u32) -> u32 { return plan[s * ${GSEG_WORDS}u + k]; }

// Channel c of the job's i-th source token (kv head h; part = q/k/v column block of SEG_ROWS sources).
fn src(s0: u32, sn: u32, part: u32, h: u32, i: u32, c: u32) -> f32 {
  var sg = s0;
  loop {
    if (sg + 1u >= s0 + sn || i < sw(sg, 7u) + sw(sg, 1u)) { break; }
    sg += 1u;
  }
  let info = sw(sg, 0u);
  let kind = info & 0xffu;
  let sl = info >> 16u;
  let r = sw(sg, 3u) + i - sw(sg, 7u);
  if (kind == ${SEG_ROWS}u) {
    return qkv[(sw(sg, 2u) + i - sw(sg, 7u)) * ${QKVD}u + part * D + c];
  }
  let base = sw(sg, 2u) + h * sw(sg, 6u);
  if (kind == ${SEG_F32}u) { return bitcast<f32>(lda(sl, base + r * D + c)); }
  let e = r * D + c;
  return f16_to_f32(half_of(lda(sl, base + e / 2u), e));
}

// Quantize channels [c, c + n) (stride 1) of token i, or tokens [i, i + n) of channel c (per channel):
// returns (scale bits, min bits) as quant/quantizer.ts quantizeGroup computes them.
fn params(s0: u32, sn: u32, part: u32, h: u32, i: u32, c: u32, n: u32, perToken: bool, maxc: f32) -> vec2<u32> {
  var lo = pos_inf();
  var hi = neg_inf();
  for (var k = 0u; k < n; k++) {
    var v: f32;
    if (perToken) { v = src(s0, sn, part, h, i, c + k); } else { v = src(s0, sn, part, h, i + k, c); }
    lo = min(lo, v);
    hi = max(hi, v);
  }
  return vec2<u32>(f32_to_f16(div_rn(hi - lo, maxc)), f32_to_f16(lo));
}

fn code(v: f32, s: f32, m: f32, maxc: f32) -> u32 {
  if (s == 0.0) { return 0u; }
  return u32(clamp(rhe(div_rn(v - m, s)), 0.0, maxc));
}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let it = wg_index(wid, nw);
  if (it >= p.n) { return; }
  let jb = p.jobs + plan[p.items + it * 2u] * 8u;
  let h = plan[p.items + it * 2u + 1u];
  let kind = plan[jb];
  let part = select(${H}u, ${H + KV}u, plan[jb + 1u] == ${JOB_VALUES}u) + h;
  let s0 = plan[jb + 2u];
  let sn = plan[jb + 3u];
  let ds = plan[jb + 4u];
  let dinfo = sw(ds, 0u);
  let dkind = dinfo & 0xffu;
  let dbits = (dinfo >> 8u) & 0xffu;
  let dsl = dinfo >> 16u;
  let dn = sw(ds, 1u);
  let dbase = sw(ds, 2u) + h * sw(ds, 6u);
  let dt0 = sw(ds, 3u);
  let cap = sw(ds, 4u);
  let G = max(sw(ds, 5u), 1u);
  if (kind == ${JOB_STORE}u) {
    if (dkind == ${SEG_F32}u) {
      for (var idx = li; idx < dn * D; idx += WG) {
        let i = idx / D;
        let c = idx % D;
        sta(dsl, dbase + (dt0 + i) * D + c, bitcast<u32>(src(s0, sn, part, h, i, c)));
      }
    } else {
      for (var idx = li; idx < dn * D / 2u; idx += WG) {
        let i = idx / (D / 2u);
        let c = (idx % (D / 2u)) * 2u;
        let lo = f32_to_f16(src(s0, sn, part, h, i, c));
        let hi = f32_to_f16(src(s0, sn, part, h, i, c + 1u));
        sta(dsl, dbase + ((dt0 + i) * D + c) / 2u, lo | (hi << 16u));
      }
    }
    return;
  }
  let maxc = f32((1u << dbits) - 1u);
  let cpw = 32u / dbits;
  let wpr = D / cpw;
  let sbase = (dbase + cap * wpr) * 2u;
  if (kind == ${JOB_QKEY}u) {
    let mbase = sbase + (cap / G) * D;
    for (var g = 0u; g < cap / G; g++) {
      for (var cp = li; cp < D / 2u; cp += WG) {
        let a = params(s0, sn, part, h, g * G, cp * 2u, G, false, maxc);
        let b = params(s0, sn, part, h, g * G, cp * 2u + 1u, G, false, maxc);
        sta(dsl, (sbase + g * D + cp * 2u) / 2u, a.x | (b.x << 16u));
        sta(dsl, (mbase + g * D + cp * 2u) / 2u, a.y | (b.y << 16u));
        gs[cp * 2u] = f16_to_f32(a.x);
        gm[cp * 2u] = f16_to_f32(a.y);
        gs[cp * 2u + 1u] = f16_to_f32(b.x);
        gm[cp * 2u + 1u] = f16_to_f32(b.y);
      }
      workgroupBarrier();
      for (var idx = li; idx < G * wpr; idx += WG) {
        let i = g * G + idx / wpr;
        let wi = idx % wpr;
        var word = 0u;
        for (var k = 0u; k < cpw; k++) {
          let c = wi * cpw + k;
          word = word | (code(src(s0, sn, part, h, i, c), gs[c], gm[c], maxc) << (k * dbits));
        }
        sta(dsl, dbase + i * wpr + wi, word);
      }
      workgroupBarrier();
    }
    return;
  }
  if (kind == ${JOB_QVAL}u) {
    // Parameters [slot][group], one thread per u32 word of each array (a word may hold a neighbour's half).
    let gpt = D / G;
    let p0 = dt0 * gpt;
    let p1 = (dt0 + dn) * gpt;
    let mbase = sbase + cap * gpt;
    for (var arr = 0u; arr < 2u; arr++) {
      let hb = select(sbase, mbase, arr == 1u);
      let w0 = (hb + p0) / 2u;
      let w1 = (hb + p1 - 1u) / 2u;
      for (var wq = w0 + li; wq <= w1; wq += WG) {
        var word = lda(dsl, wq);
        for (var hf = 0u; hf < 2u; hf++) {
          let hx = wq * 2u + hf;
          if (hx >= hb + p0 && hx < hb + p1) {
            let pi = hx - hb;
            let i = pi / gpt - dt0;
            let g = pi % gpt;
            let pr = params(s0, sn, part, h, i, g * G, G, true, maxc);
            let v = select(pr.x, pr.y, arr == 1u);
            word = select((word & 0xffffu) | (v << 16u), (word & 0xffff0000u) | v, hf == 0u);
            if (arr == 0u) {
              let sv = f16_to_f32(pr.x);
              let mv = f16_to_f32(pr.y);
              for (var wi = 0u; wi < G / cpw; wi++) {
                var cw = 0u;
                for (var k = 0u; k < cpw; k++) {
                  let c = g * G + wi * cpw + k;
                  cw = cw | (code(src(s0, sn, part, h, i, c), sv, mv, maxc) << (k * dbits));
                }
                sta(dsl, dbase + (dt0 + i) * wpr + (g * G) / cpw + wi, cw);
              }
            }
          }
        }
        sta(dsl, wq, word);
      }
    }
  }
}`;
}
