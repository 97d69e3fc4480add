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
  // sh, fq (the folded queries) and ml (the value threads' maxima and sums).
  const bytes = (s: number) => (fixed(s) + s * nq * D + lanes * nq) * 4;
  let slots = 16;
  while (slots > 1 && bytes(slots) > workgroupBytes) slots--;
  if (bytes(slots) > workgroupBytes) {
    throw new Error(`webgpu: attention for ${nq} query heads per kv head of ${D} needs more workgroup memory than ${workgroupBytes} bytes`);
  }
  return { nq, ch, slots, shared: fixed(slots) };
}

/** Declarations of the first `na` arena bindings (the layout always has ARENAS; unused ones stay unbound in the shader). */
function arenaDecls(ty: string, access: 'read' | 'read_write', first: number, na: number): string {
  let s = '';
  for (let i = 0; i < na; i++) s += `@group(0) @binding(${first + i}) var<storage, ${access}> a${i}: array<${ty}>;\n`;
  return s;
}

/** A function selecting arena slot `s` (no branch when one slot is in use, the usual case). */
function arenaSwitch(na: number, sig: string, body: (a: string) => string): string {
  if (na === 1) return `fn ${sig} {\n  ${body('a0')}\n}`;
  let cases = '';
  for (let i = 1; i < na; i++) cases += `    case ${i}u: { ${body(`a${i}`)} }\n`;
  return `fn ${sig} {\n  switch s {\n${cases}    default: { ${body('a0')} }\n  }\n}`;
}

/** The value of a b-bit code at position k of a word, as the float 1 + code·2^-b. */
function magic(word: string, bits: number, k: number): string {
  const sh = 23 - bits - bits * k;
  const mask = (((1 << bits) - 1) << (23 - bits)) >>> 0;
  const moved = sh >= 0 ? `(${word} << ${sh}u)` : `(${word} >> ${-sh}u)`;
  return `bitcast<f32>(0x3f800000u | (${moved} & 0x${mask.toString(16)}u))`;
}

export function attendWgsl(shape: AttnShape, g: AttnGeometry, na: number): string {
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const { nq: NQ, ch: CH, slots: NS } = g;
  const QKVD = (H + 2 * KV) * D;
  const CHUNKS = D / CH;
  const LANES = Math.floor(TILE / CHUNKS);
  const D16 = D / 16;
  const QOFF = 0, SCOFF = NQ * D, FBOFF = SCOFF + NQ * TILE, FPOFF = FBOFF + NS * NQ * 2;
  // Per-thread state lives in scalars (m0, a0_3, …), every index a constant: no private arrays, which
  // GPUs would put in local memory when indexed at run time.
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  const J = (f: (j: number) => string, sep = '\n') => range(NQ).map(f).join(sep);
  const JK = (f: (j: number, k: number) => string) => range(NQ).flatMap((j) => range(CH).map((k) => f(j, k))).join('\n');
  const qvec = (j: number, c: string, o = 0) =>
    `vec4<f32>(sh[${QOFF + j * D + o}u + ${c}], sh[${QOFF + j * D + o + 1}u + ${c}], sh[${QOFF + j * D + o + 2}u + ${c}], sh[${QOFF + j * D + o + 3}u + ${c}])`;

  // Scores of one token against a KIVI key row of `bits` bits: S_j = Σ qs_jc·(1 + code·2^-b).
  const kiviScore = (bits: number) => {
    const cpw = 32 / bits;
    const wpr = (D * bits) / 32;
    const perWord = (word: string, wi: string) => {
      let s = '';
      for (let k = 0; k < cpw; k += 4) {
        s += `          { let c4 = fb + (${wi}) * ${cpw / 4}u + ${k / 4}u;\n`;
        for (let e = 0; e < 4; e++) s += `            let v${e} = ${magic(word, bits, k + e)};\n`;
        s += J((j) => `            { let q = fq[c4 + ${j * (D / 4)}u]; S${j} = fma(q.x, v0, fma(q.y, v1, fma(q.z, v2, fma(q.w, v3, S${j})))); }`) + '\n';
        s += '          }\n';
      }
      return s;
    };
    let body = '';
    if (wpr % 4 === 0) {
      body += `        for (var wq = 0u; wq < ${wpr / 4}u; wq++) {\n          let q4 = ld4(sl, (row >> 2u) + wq);\n`;
      for (let e = 0; e < 4; e++) body += `          { let wd = q4[${e}];\n${perWord('wd', `wq * 4u + ${e}u`)}          }\n`;
      body += '        }\n';
    } else {
      body += `        for (var wi = 0u; wi < ${wpr}u; wi++) {\n          let wd = ldw(sl, row + wi);\n${perWord('wd', 'wi')}        }\n`;
    }
    return `      if (kbits == ${bits}u) {\n        let row = kb0 + (st0 + t - kst) * ${wpr}u;\n${body}      }\n`;
  };

  // Value accumulation of one token from a KIVI value row of `bits` bits (the chunk in one group).
  const kiviValue = (bits: number) => {
    const cpw = 32 / bits;
    const wpr = (D * bits) / 32;
    let s = `            if (vb == ${bits}u) {\n              let row = vbase + vrow * ${wpr}u + (c0 * ${bits}u) / 32u;\n`;
    const words = Math.max(1, (CH * bits) / 32);
    const partial = CH * bits < 32;
    for (let wi = 0; wi < words; wi++) {
      s += `              let w${wi} = ldw(sl, row + ${wi}u)${partial ? ` >> ((c0 % ${cpw}u) * ${bits}u)` : ''};\n`;
    }
    for (let k = 0; k < CH; k++) s += `              let m${k} = ${magic(`w${Math.floor((k * bits) / 32)}`, bits, k % cpw)};\n`;
    s += J((j) => `              { let ws = p${j} * sv; W${j} += ws; B${j} += p${j} * mv;\n` +
      range(CH).map((k) => `                a${j}_${k} = fma(ws, m${k}, a${j}_${k});`).join('\n') + '\n              }') + '\n';
    return s + '            }\n';
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
${arenaDecls('vec4<u32>', 'read', 5, na)}
${CONVERT}
${GRID}
var<workgroup> sh: array<f32, ${g.shared}>;
var<workgroup> fq: array<vec4<f32>, ${(NS * NQ * D) / 4}>;
var<workgroup> ml: array<f32, ${LANES * NQ}>;

${arenaSwitch(na, 'ld4(s: u32, i: u32) -> vec4<u32>', (a) => `return ${a}[i];`)}
// A word of a vec4 by selects (indexing a vector value at run time makes some compilers copy it to memory).
fn pick(v: vec4<u32>, k: u32) -> u32 { return select(select(v.x, v.y, k == 1u), select(v.z, v.w, k == 3u), k >= 2u); }
fn ldw(s: u32, i: u32) -> u32 { return pick(ld4(s, i >> 2u), i & 3u); }
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
${J((j) => `  var m${j} = neg_inf();\n  var l${j} = 0.0;\n  var W${j} = 0.0;\n  var B${j} = 0.0;\n  var p${j} = 0.0;`)}
${JK((j, k) => `  var a${j}_${k} = 0.0;`)}
  let cw = li % CHUNKS;
  let u = li / CHUNKS;
  let c0 = cw * ${CH}u;
  workgroupBarrier();
  for (var a = ta; a < tb; a += WG) {
    let b = min(a + WG, tb);
    loop { if (a < seg_end(kseg)) { break; } kseg += 1u; }
    loop { if (a < seg_end(vseg)) { break; } vseg += 1u; }
    let t = a + li;
${J((j) => `    var s${j} = neg_inf();`)}
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
            let c = cb + k;
            let q4 = vec4<f32>(sh[${QOFF}u + j * D + c], sh[${QOFF + 1}u + j * D + c], sh[${QOFF + 2}u + j * D + c], sh[${QOFF + 3}u + j * D + c]);
            let s4 = vec4<f32>(ldh(sl, hs + k), ldh(sl, hs + k + 1u), ldh(sl, hs + k + 2u), ldh(sl, hs + k + 3u));
            let m4 = vec4<f32>(ldh(sl, hm + k), ldh(sl, hm + k + 1u), ldh(sl, hm + k + 2u), ldh(sl, hm + k + 3u));
            let qs = q4 * s4;
            fq[((slot * NQ + j) * D + c) / 4u] = qs;
            pq += (qs.x + qs.y) + (qs.z + qs.w);
            pb += dot(q4, m4);
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
        let gg = t / kG;
        if (t < b && t < kb && gg >= g0 + ps && gg < g0 + ps + nsl) {
          let slot = gg - g0 - ps;
          var sg = kseg;
          loop { if (t < seg_end(sg)) { break; } sg += 1u; }
          let sl = sw(sg, 0u) >> 16u;
          let kb0 = sw(sg, 2u) + h * sw(sg, 6u);
          let st0 = sw(sg, 3u);
          let kst = sw(sg, 7u);
          let fb = slot * NQ * ${D / 4}u;
${J((j) => `          var S${j} = 0.0;`)}
${kiviScore(2)}${kiviScore(4)}${kiviScore(8)}
${J((j) => `          s${j} = (kmul * (S${j} - sh[${FBOFF}u + (slot * NQ + ${j}u) * 2u]) + sh[${FBOFF}u + (slot * NQ + ${j}u) * 2u + 1u]) * SCALE;`)}
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
${J((j) => `      var S${j} = 0.0;`)}
      if (kind == ${SEG_ROWS}u) {
        let o4 = ((sw(sg, 2u) + t - sw(sg, 7u)) * QKVD + (${H}u + h) * D) / 4u;
        for (var c4 = 0u; c4 < ${D / 4}u; c4++) {
          let kv = qkv[o4 + c4];
${J((j) => `          S${j} += dot(kv, ${qvec(j, 'c4 * 4u')});`)}
        }
      } else if (kind == ${SEG_F32}u) {
        let o4 = (sw(sg, 2u) + h * sw(sg, 6u) + r * D) / 4u;
        for (var c4 = 0u; c4 < ${D / 4}u; c4++) {
          let kv = bitcast<vec4<f32>>(ld4(sl, o4 + c4));
${J((j) => `          S${j} += dot(kv, ${qvec(j, 'c4 * 4u')});`)}
        }
      } else {
        let o4 = (sw(sg, 2u) + h * sw(sg, 6u) + r * ${D / 2}u) / 4u;
        for (var c8 = 0u; c8 < ${D / 8}u; c8++) {
          let w4 = ld4(sl, o4 + c8);
          let k0 = vec4<f32>(unpack2x16float(w4.x), unpack2x16float(w4.y));
          let k1 = vec4<f32>(unpack2x16float(w4.z), unpack2x16float(w4.w));
${J((j) => `          S${j} += dot(k0, ${qvec(j, 'c8 * 8u')}) + dot(k1, ${qvec(j, 'c8 * 8u', 4)});`)}
        }
      }
${J((j) => `      s${j} = S${j} * SCALE;`)}
    }
${J((j) => `    sh[${SCOFF + j * TILE}u + li] = s${j};`)}
    workgroupBarrier();
    // ---- values: this thread's CH channels of tokens u, u + LANES, … of the tile ----
    if (u < LANES) {
      var vs = vseg;
      for (var tt = u; tt < b - a; tt += LANES) {
        let t2 = a + tt;
        loop { if (t2 < seg_end(vs)) { break; } vs += 1u; }
        // Online softmax per value thread: its own running maximum and sum (lanes merge at the end).
${J((j) => `        {
          let sv = sh[${SCOFF + j * TILE}u + tt];
          if (sv > m${j}) {
            let al = exp(m${j} - sv);
            m${j} = sv;
            l${j} *= al;
            W${j} *= al;
            B${j} *= al;
${range(CH).map((k) => `            a${j}_${k} *= al;`).join('\n')}
          }
          p${j} = exp(sv - m${j});
          l${j} += p${j};
        }`)}
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
            // Groups narrower than a thread's chunk (rare specs): dequantize channel by channel.
            let mask = (1u << vb) - 1u;
            let cpw = 32u / vb;
${range(CH).map((k) => `            {
              let c = c0 + ${k}u;
              let v = (ldh(sl, hs + c / G) * f32((ldw(sl, vbase + vrow * wpr + c / cpw) >> ((c % cpw) * vb)) & mask) + ldh(sl, hm + c / G)) * vinv;
${J((j) => `              a${j}_${k} = fma(p${j}, v, a${j}_${k});`)}
            }`).join('\n')}
          }
        } else if (kind == ${SEG_F32}u) {
          let o4 = (sw(vs, 2u) + h * sw(vs, 6u) + vrow * D + c0) / 4u;
${range(CH / 4).map((k4) => `          let v${k4} = bitcast<vec4<f32>>(ld4(sl, o4 + ${k4}u)) * vinv;`).join('\n')}
${JK((j, k) => `          a${j}_${k} = fma(p${j}, v${k >> 2}[${k & 3}], a${j}_${k});`)}
        } else if (kind == ${SEG_ROWS}u) {
          let o4 = ((sw(vs, 2u) + t2 - sw(vs, 7u)) * QKVD + (${H + KV}u + h) * D + c0) / 4u;
${range(CH / 4).map((k4) => `          let v${k4} = qkv[o4 + ${k4}u] * vinv;`).join('\n')}
${JK((j, k) => `          a${j}_${k} = fma(p${j}, v${k >> 2}[${k & 3}], a${j}_${k});`)}
        } else {
          let ow = sw(vs, 2u) + h * sw(vs, 6u) + (vrow * D + c0) / 2u;
${range(CH / 2).map((k2) => `          let v${k2} = unpack2x16float(ldw(sl, ow + ${k2}u)) * vinv;`).join('\n')}
${JK((j, k) => `          a${j}_${k} = fma(p${j}, v${k >> 1}[${k & 1}], a${j}_${k});`)}
        }
      }
    }
    workgroupBarrier();
  }
  // ---- merge the value threads' partial softmaxes, then the output (or this split's partial) ----
  if (u < LANES && cw == 0u) {
${J((j) => `    ml[u * NQ + ${j}u] = m${j};`)}
  }
  workgroupBarrier();
${J((j) => `  var M${j} = neg_inf();`)}
  for (var uu = 0u; uu < LANES; uu++) {
${J((j) => `    M${j} = max(M${j}, ml[uu * NQ + ${j}u]);`)}
  }
  workgroupBarrier();
  if (u < LANES) {
${J((j) => `    {
      let e = exp(m${j} - M${j});
${range(CH).map((k) => `      sh[(u * NQ + ${j}u) * D + c0 + ${k}u] = (vmul * (a${j}_${k} - W${j}) + B${j}) * e;`).join('\n')}
      if (cw == 0u) { ml[u * NQ + ${j}u] = l${j} * e; }
    }`)}
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
        var mj = M0;
${J((j) => (j === 0 ? '' : `        if (j == ${j}u) { mj = M${j}; }`))}
        part[pb] = mj;
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
export function jobsWgsl(shape: AttnShape, na: number): string {
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const QKVD = (H + 2 * KV) * D;
  return /* wgsl */ `
const D = ${D}u;
const WG = 128u;
struct P { items: u32, n: u32, jobs: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> plan: array<u32>;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
${arenaDecls('u32', 'read_write', 3, na)}
${CONVERT}
${DIVIDE}
${GRID}
var<workgroup> gs: array<f32, ${D}>;
var<workgroup> gm: array<f32, ${D}>;

${arenaSwitch(na, 'lda(s: u32, i: u32) -> u32', (a) => `return ${a}[i];`)}
${arenaSwitch(na, 'sta(s: u32, i: u32, v: u32)', (a) => `${a}[i] = v;`)}
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
