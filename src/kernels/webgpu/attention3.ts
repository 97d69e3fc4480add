/**
 * Decode attention, third design (`KIVI_WEBGPU_ATTN=v3`; issue 12): a kernel specialised for the common
 * decode case, a query reading long runs of whole KIVI key blocks and value pages.
 *
 * One workgroup of 64 threads per work item (task, kv head, token run; planbuf.ts), tiles of 64 tokens.
 * Each item has a fast part (item word 7: how many tokens, and the task's variant = key bits × value
 * bits) and a general tail (residual tokens, other kinds). The fast part, per tile:
 *
 *  A  every thread scores one token for all NQ query heads of the kv head straight from its packed key
 *     row (loaded one tile ahead), with the query folded per key group (q·scale·2^e·SCALE, in workgroup
 *     memory, read as broadcast vec4s) and the group's bias Σ q·(min − 2^e·scale) from 16-channel partial
 *     sums; a score above the running maximum M raises a workgroup atomic (rare after the first tile).
 *     The tile's value codes, value scales/mins and the next tile's key scales/mins are issued here, so
 *     their latency hides behind the scoring.
 *  B  (barrier) the new maximum; accumulators rescaled only when it rose (uniform branch); each thread
 *     turns its token's scores into weights p once (NQ exponentials a token) and writes p·scale and p·min
 *     of each of its token's value groups; 16 threads fold the next tile's key groups.
 *  C  (barrier) values: each thread owns CW channels (one code word at 2 bits) of a stripe of tokens:
 *     one u32 load feeds CW·NQ fused multiply-adds, weighted by p·scale from workgroup memory.
 *
 * Two barriers per 64 tokens; page handles are resolved once per tile for values and once per token for
 * keys (no segment walks); nothing is reduced across threads until the end of the item (the lanes' sums
 * and the softmax denominators once per query head). A code c is read as the float 1 + c·2^-e (its bits
 * OR'ed into the mantissa of 1.0: a shift and an and-or). At 2 bits one shift serves two codes: the upper
 * lands at the top of the mantissa (e = 2), the lower two bits below (e = 4); 2^e goes into the fold
 * (keys) and into the final scale of the channel (values), and the 1's come back out through the
 * folded bias (keys) and Σ p·scale (values).
 *
 * Per token and kv head at 2 bits, NQ = 4, D = 128 (lane instructions): keys 8 loads, 64 shifts + 128
 * and-ors, 128 broadcast vec4 loads of the folded query, 512 FMA, 8 vec4 loads + adds of bias partials;
 * weights 4 exp and ~40 more; values 8 threads × (1 load, 2 vec4 loads, 8 shifts + 16 and-ors, 64 FMA,
 * 8 adds). About 1 700 in all, against 1 024 FMA of arithmetic that any kernel does.
 *
 * The tail (and every task that does not qualify: 8-bit codes, key groups not a multiple of 32, value
 * groups giving more than 4 per token, float caches) goes through a general per-token path with the same
 * softmax state: thread = token for the scores (any segment kind, KIVI keys dequantized channel by
 * channel), the value threads reading whatever page kind holds each token.
 */
import { SEG_F32, SEG_KIVI_K, SEG_KIVI_V, SEG_ROWS } from '../layout.js';
import type { AttnShape } from '../types.js';
import { GSEG_WORDS, GTASK_WORDS, ITEM_WORDS, NO_PARTIAL } from './attention.js';
import { CONVERT, f32lit, GRID } from './wgsl.js';

/** Threads of a v3 workgroup = tokens of a tile. */
export const WG3 = 64;
/** Most value groups per token on the fast path (its p·scale table is sized for this). */
const NGV_MAX = 4;

/** Item word 7: the task's variant in bits 28–31, the item's fast token count below. */
export const V3_VARIANT_SHIFT = 28;
export const V3_FAST_MASK = (1 << V3_VARIANT_SHIFT) - 1;

/**
 * The v3 variant of a task: 0 = general path only; 1 + 2·(key bits = 4) + (value bits = 4) when its KIVI
 * keys and values can take the fast path.
 */
export function v3Variant(shape: AttnShape, kbits: number, kG: number, vbits: number, vG: number): number {
  const D = shape.headDim;
  if (D % 64 !== 0) return 0;
  if ((kbits !== 2 && kbits !== 4) || kG === 0 || kG % 32 !== 0) return 0;
  if ((vbits !== 2 && vbits !== 4) || vG === 0) return 0;
  const ngv = D / vG;
  if (ngv !== 1 && ngv !== 2 && ngv !== 4) return 0;
  return 1 + (kbits === 4 ? 2 : 0) + (vbits === 4 ? 1 : 0);
}

/** Key and value bits of a fast variant (0: none). */
function variantBits(v: number): { kb: number; vb: number } {
  if (v === 0) return { kb: 0, vb: 0 };
  return { kb: v - 1 >= 2 ? 4 : 2, vb: (v - 1) % 2 === 1 ? 4 : 2 };
}

/** Channels per value thread: a code word's (capped so NQ·CW accumulators stay ≤ 64). */
function channelsPerThread(shape: AttnShape, vb: number): number {
  const NQ = shape.numHeads / shape.numKvHeads;
  const cpw = vb === 4 ? 8 : 16;
  let cw = cpw;
  while (cw > 4 && NQ * cw > 64) cw /= 2;
  return cw;
}

/** Workgroup bytes of the v3 kernel of a shape and variant. */
export function attn3Bytes(shape: AttnShape, variant: number): number {
  const D = shape.headDim;
  const NQ = shape.numHeads / shape.numKvHeads;
  const NQ4 = Math.ceil(NQ / 4);
  const CW = channelsPerThread(shape, variantBits(variant).vb);
  const qh = NQ * D;
  const qsf = Math.max(4 * NQ * D, WG3 * CW);
  const qbp = 4 * (D / 16) * NQ4 * 4;
  const wsb = WG3 * NGV_MAX * 2 * NQ4 * 4;
  const pw = WG3 * NQ4 * 4;
  const vti = 4 * WG3;
  return (qh + qsf + qbp + wsb + pw + vti + NQ) * 4;
}

/** Whether the v3 kernel fits a shape on a device allowing `workgroupBytes` (every variant). */
export function attn3Fits(shape: AttnShape, workgroupBytes: number): boolean {
  for (let v = 0; v <= 4; v++) if (attn3Bytes(shape, v) > workgroupBytes) return false;
  return true;
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** `x << sh` for sh ≥ 0, `x >> -sh` otherwise. */
function shift(x: string, sh: number): string {
  return sh >= 0 ? `(${x} << ${sh}u)` : `(${x} >> ${-sh}u)`;
}
/** The float 1 + code·2^-e of the code under `mask` (at the top of the mantissa, or two bits below). */
function mag(x: string, mask: number): string {
  return `bitcast<f32>(0x3f800000u | (${x} & 0x${mask.toString(16)}u))`;
}
const TOP2 = 0x600000; // bits 21-22: e = 2
const LOW2 = 0x180000; // bits 19-20: e = 4
const TOP4 = 0x780000; // bits 19-22: e = 4

/**
 * Lines decoding the codes of word `w` into floats `${v}0`, `${v}1`, …, n codes of `bits` bits from the
 * word's lowest; returns the lines and each code's 2^e.
 */
function decode(w: string, v: string, bits: number, n: number, ind: string): { code: string; f: number[] } {
  let code = '';
  const f: number[] = [];
  if (bits === 2) {
    // Code 2p+1 at bits 4p+2.. goes to the top (e = 2), code 2p rides two bits below (e = 4).
    for (let p = 0; p < n / 2; p++) {
      code += `${ind}let ${v}x${p} = ${shift(w, 19 - 4 * p)};\n`;
      code += `${ind}let ${v}${2 * p} = ${mag(`${v}x${p}`, LOW2)};\n${ind}let ${v}${2 * p + 1} = ${mag(`${v}x${p}`, TOP2)};\n`;
      f.push(16, 4);
    }
  } else {
    for (let k = 0; k < n; k++) {
      code += `${ind}let ${v}${k} = ${mag(shift(w, 19 - 4 * k), TOP4)};\n`;
      f.push(16);
    }
  }
  return { code, f };
}

/**
 * @param prefetch load each tile's key rows during the tile before (more registers in flight), or at the
 * start of its own tile (`KIVI_WEBGPU_ATTN=v3np`: fewer registers; an A/B for the GPU to decide).
 */
export function attend3Wgsl(shape: AttnShape, na: number, variant: number, prefetch = true): string {
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const NQ = H / KV;
  const NQ4 = Math.ceil(NQ / 4);
  const QKVD = (H + 2 * KV) * D;
  const { kb: KB, vb: VB } = variantBits(variant);
  const CW = channelsPerThread(shape, VB);
  const CHUNKS = D / CW;
  const LANES = WG3 / CHUNKS;
  const TPT = WG3 / LANES;
  const NCH = D / 16;
  const QSF = Math.max(4 * NQ * D, WG3 * CW) / 4;
  const fast = variant !== 0;
  // Values: the 2^e of each of a thread's CW channels (fast layout; the general path divides by it).
  const vf = VB === 2 ? range(CW).map((k) => (k % 2 === 0 ? 16 : 4)) : VB === 4 ? range(CW).map(() => 16) : range(CW).map(() => 1);
  const J = (f: (j: number) => string, sep = '\n') => range(NQ).map(f).join(sep);
  const JK = (f: (j: number, k: number) => string, sep = '\n') =>
    range(NQ)
      .flatMap((j) => range(CW).map((k) => f(j, k)))
      .join(sep);
  const comp = (j: number) => `[${j % 4}]`;
  const NKW = fast ? (D * KB) / 32 : 0; // key row words
  const arenaSw = (sig: string, body: (a: string) => string) => {
    if (na === 1) return `fn ${sig} {\n  ${body('a0')}\n}`;
    let cases = '';
    for (let i = 1; i < na; i++) cases += `    case ${i}u: { ${body(`a${i}`)} }\n`;
    return `fn ${sig} {\n  switch s {\n${cases}    default: { ${body('a0')} }\n  }\n}`;
  };
  let arenas = '';
  for (let i = 0; i < na; i++) arenas += `@group(0) @binding(${5 + i}) var<storage, read> a${i}: array<u32>;\n`;

  // ---- fast path pieces ----------------------------------------------------------------------------
  // Scores of this thread's token from the key row words kc0.. (current tile).
  const fastScore = () => {
    if (!fast) return '';
    let s = '';
    const cpw = 32 / KB;
    for (let wi = 0; wi < NKW; wi++) {
      s += `      {\n`;
      const { code } = decode(`kc${wi}`, 'v', KB, cpw, '        ');
      s += code;
      for (let q4 = 0; q4 < cpw / 4; q4++) {
        const c4 = (wi * cpw) / 4 + q4;
        s += J(
          (j) =>
            `        { let q = qsf[qb + ${j * (D / 4) + c4}u]; S${j} = fma(q.x, v${4 * q4}, fma(q.y, v${4 * q4 + 1}, fma(q.z, v${4 * q4 + 2}, fma(q.w, v${4 * q4 + 3}, S${j})))); }`,
        );
        s += '\n';
      }
      s += `      }\n`;
    }
    return s;
  };
  // Fold of one key group's 16 channels (this thread's chunk) for all query heads, from fs0..7 / fm0..7.
  const fold = () => {
    if (!fast) return '';
    const f = KB === 2 ? [16, 4, 16, 4] : [16, 16, 16, 16];
    let s = `${range(NQ4)
      .map((jj) => `      var bp${jj} = vec4<f32>(0.0);`)
      .join('\n')}\n`;
    for (let c4 = 0; c4 < 4; c4++) {
      s += `      {\n        let s4 = vec4<f32>(unpack2x16float(fs${2 * c4}), unpack2x16float(fs${2 * c4 + 1}));\n`;
      s += `        let m4 = vec4<f32>(unpack2x16float(fm${2 * c4}), unpack2x16float(fm${2 * c4 + 1}));\n`;
      s += `        let sf = s4 * vec4<f32>(${f.map((x) => f32lit(x)).join(', ')});\n        let mb = m4 - sf;\n`;
      s += J(
        (j) =>
          `        { let q = qh[${j * (D / 4)}u + ch * 4u + ${c4}u]; qsf[ob + ${j * (D / 4)}u + ch * 4u + ${c4}u] = q * sf; bp${j >> 2}${comp(j)} += dot(q, mb); }`,
      );
      s += '\n      }\n';
    }
    s += range(NQ4)
      .map((jj) => `      qbp[((nb * 2u + sl) * ${NCH}u + ch) * ${NQ4}u + ${jj}u] = bp${jj};`)
      .join('\n');
    return `${s}\n`;
  };
  // Values of the tile on the fast path: this thread's CW channels of tokens lane, lane + LANES, ….
  const fastValues = () => {
    if (!fast) return '';
    const cpw = 32 / VB;
    let s = '';
    for (let i = 0; i < TPT; i++) {
      s += `      {\n        let tk = lane + ${i * LANES}u;\n`;
      s += range(NQ4)
        .map(
          (jj) =>
            `        let ws${jj} = wsb[((tk * ${NGV_MAX}u + vg) * 2u) * ${NQ4}u + ${jj}u];\n        let pm${jj} = wsb[((tk * ${NGV_MAX}u + vg) * 2u + 1u) * ${NQ4}u + ${jj}u];`,
        )
        .join('\n');
      s += `\n        let wd = vc${i}${CW < cpw ? ' >> vsh' : ''};\n`;
      s += decode('wd', 'v', VB, CW, '        ').code;
      s += J((j) => `        W${j} += ws${j >> 2}${comp(j)};\n        B${j} += pm${j >> 2}${comp(j)};`);
      s += `\n${JK((j, k) => `        a${j}_${k} = fma(ws${j >> 2}${comp(j)}, v${k}, a${j}_${k});`)}\n      }\n`;
    }
    return s;
  };

  // ---- the general path's value kinds --------------------------------------------------------------
  const slowValue = () => {
    const add = (val: (k: number) => string) =>
      range(CW)
        .map((k) => `          { let x = ${val(k)}; ${J((j) => `a${j}_${k} = fma(p${j}, x, a${j}_${k});`, ' ')} }`)
        .join('\n');
    const inv = (k: number) => f32lit(1 / vf[k]!);
    return `        if (kind == ${SEG_KIVI_V}u) {
          let bits = (info >> 8u) & 0xffu;
          let cpw = 32u / bits;
          let mask = (1u << bits) - 1u;
${add((k) => `(ldh(sl, r1 + (c0 + ${k}u) / vG) * f32((lda(sl, r0 + (c0 + ${k}u) / cpw) >> (((c0 + ${k}u) % cpw) * bits)) & mask) + ldh(sl, r2 + (c0 + ${k}u) / vG)) * ${inv(k)}`)}
        } else if (kind == ${SEG_F32}u) {
${add((k) => `bitcast<f32>(lda(sl, r0 + c0 + ${k}u)) * ${inv(k)}`)}
        } else if (kind == ${SEG_ROWS}u) {
${add((k) => `qkv[(r0 + c0 + ${k}u) >> 2u][(c0 + ${k}u) & 3u] * ${inv(k)}`)}
        } else {
${range(CW / 2)
  .map((k2) => `          let h${k2} = unpack2x16float(lda(sl, r0 + c0 / 2u + ${k2}u));`)
  .join('\n')}
${add((k) => `h${k >> 1}.${k % 2 === 0 ? 'x' : 'y'} * ${inv(k)}`)}
        }
`;
  };

  return /* wgsl */ `
// Decode attention v3 (attention3.ts), variant ${variant}: keys ${KB || 'general'}-bit, values ${VB || 'general'}-bit.
const WG = ${WG3}u;
const D = ${D}u;
const NQ = ${NQ}u;
const QKVD = ${QKVD}u;
const LANES = ${LANES}u;
const SCALE = ${f32lit(1 / Math.sqrt(D))};
// The ordered-bits image of -infinity (see ord()).
const ORD_NEG_INF = 0x007fffffu;
struct P { items: u32, n: u32, tasks: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> plan: array<u32>;
@group(0) @binding(2) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> att: array<f32>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
${arenas}
${CONVERT}
${GRID}
// The query × SCALE [head][D/4].
var<workgroup> qh: array<vec4<f32>, ${(NQ * D) / 4}>;
// The folded query [buffer][group slot][head][D/4] (double-buffered: the next tile's is written while
// this tile's is read); at the end, the value lanes' outputs.
var<workgroup> qsf: array<vec4<f32>, ${QSF}>;
// Key bias partials Σ q·(min − 2^e·scale) per 16 channels [buffer][slot][chunk][heads/4].
var<workgroup> qbp: array<vec4<f32>, ${4 * NCH * NQ4}>;
// Per token of the tile and value group: p·scale, then p·min [token][group][2][heads/4].
var<workgroup> wsb: array<vec4<f32>, ${WG3 * NGV_MAX * 2 * NQ4}>;
// Per token: the weights (general path); at the end the threads' softmax sums.
var<workgroup> pw: array<vec4<f32>, ${WG3 * NQ4}>;
// General path: where each token's value lives (info word with the page's slot, row, scale and min halves).
var<workgroup> vti: array<u32, ${4 * WG3}>;
// Running maximum per query head, as ordered bits.
var<workgroup> wm: array<atomic<u32>, ${NQ}>;

${arenaSw('lda(s: u32, i: u32) -> u32', (a) => `return ${a}[i];`)}
fn ldh(s: u32, hi: u32) -> f32 { return f16_to_f32(half_of(lda(s, hi >> 1u), hi)); }
fn sw(s: u32, k: u32) -> u32 { return plan[s * ${GSEG_WORDS}u + k]; }
fn seg_end(s: u32) -> u32 { return sw(s, 7u) + sw(s, 1u); }
// Where token t of segment s lives: (arena slot, first word of its page, its slot in the page).
fn seg_at(s: u32, t: u32) -> vec3<u32> {
  let info = sw(s, 0u);
  let r = sw(s, 3u) + t - sw(s, 7u);
  if ((info & 0x80000000u) == 0u) { return vec3<u32>((info >> 16u) & 0x7fffu, sw(s, 2u), r); }
  let cap = sw(s, 4u);
  let pi = r / cap;
  let pg = plan[sw(s, 2u) + pi];
  return vec3<u32>(pg >> 27u, (pg & 0x7ffffffu) * 4u, r - pi * cap);
}
// The page pi of segment s (a page run's table entry, or the segment's one page): (arena slot, first word).
fn page(s: u32, pi: u32) -> vec2<u32> {
  let info = sw(s, 0u);
  if ((info & 0x80000000u) == 0u) { return vec2<u32>((info >> 16u) & 0x7fffu, sw(s, 2u)); }
  let pg = plan[sw(s, 2u) + pi];
  return vec2<u32>(pg >> 27u, (pg & 0x7ffffffu) * 4u);
}
// Floats as u32 in the same order (for the atomic maximum), and back.
fn ord(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  return select(b ^ 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}
fn unord(u: u32) -> f32 {
  return bitcast<f32>(select(~u, u ^ 0x80000000u, (u & 0x80000000u) != 0u));
}
fn hf(w: u32, hi: u32) -> f32 { let u = unpack2x16float(w); return select(u.x, u.y, (hi & 1u) != 0u); }

@compute @workgroup_size(${WG3})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let it = wg_index(wid, nw);
  if (it >= p.n) { return; }
  let ib = p.items + it * ${ITEM_WORDS}u;
  // Items of other variants are another pipeline's.
  if ((plan[ib + 7u] >> ${V3_VARIANT_SHIFT}u) != ${variant}u) { return; }
  let task = plan[ib];
  let h = plan[ib + 1u];
  let ta = plan[ib + 2u];
  let tb = plan[ib + 3u];
  var kseg = plan[ib + 4u];
  var vseg = plan[ib + 5u];
  let pidx = plan[ib + 6u];
  let fe = ta + (plan[ib + 7u] & 0x${V3_FAST_MASK.toString(16)}u);
  let tk = p.tasks + task * ${GTASK_WORDS}u;
  let qrow = plan[tk];
  let vinfo = plan[tk + 7u];
  let vG = max(vinfo >> 8u, 1u);
  for (var i = li; i < ${(NQ * D) / 4}u; i += WG) { qh[i] = qkv[(qrow * QKVD + h * NQ * D) / 4u + i] * SCALE; }
  if (li < NQ) { atomicStore(&wm[li], ORD_NEG_INF); }
${J((j) => `  var M${j} = neg_inf();\n  var l${j} = 0.0;\n  var W${j} = 0.0;\n  var B${j} = 0.0;`)}
${JK((j, k) => `  var a${j}_${k} = 0.0;`)}
  // Value threads: CW channels [c0, c0 + CW) of tokens lane, lane + LANES, … of each tile.
  let lane = li / ${CHUNKS}u;
  let c0 = (li % ${CHUNKS}u) * ${CW}u;
  workgroupBarrier();
${fast ? fastLoop() : ''}
  // ---- the general path: tokens [fe, tb), any segment kinds ----
  for (var t0 = fe; t0 < tb; t0 += WG) {
    let n = min(WG, tb - t0);
    loop { if (t0 < seg_end(kseg)) { break; } kseg += 1u; }
    loop { if (t0 < seg_end(vseg)) { break; } vseg += 1u; }
    let t = t0 + li;
${J((j) => `    var s${j} = neg_inf();`)}
    if (li < n) {
      var sg = kseg;
      loop { if (t < seg_end(sg)) { break; } sg += 1u; }
      let info = sw(sg, 0u);
      let kind = info & 0xffu;
      let pg = seg_at(sg, t);
      let sl = pg.x;
${J((j) => `      var S${j} = 0.0;`)}
      if (kind == ${SEG_KIVI_K}u) {
        // Dequantized channel by channel: the general path is for a few residual-adjacent tokens.
        let bits = (info >> 8u) & 0xffu;
        let G = sw(sg, 5u);
        let cap = sw(sg, 4u);
        let cpw = 32u / bits;
        let mask = (1u << bits) - 1u;
        let wpr = D * bits / 32u;
        let base = pg.y + h * sw(sg, 6u);
        let row = base + pg.z * wpr;
        let hs = (base + cap * wpr) * 2u + (pg.z / G) * D;
        let hm = hs + (cap / G) * D;
        // Two channels a step: one word of scales, one of minimums (hs, hm are even).
        for (var c = 0u; c < D; c += 2u) {
          let wd = lda(sl, row + c / cpw) >> ((c % cpw) * bits);
          let k = unpack2x16float(lda(sl, (hs + c) >> 1u)) * vec2<f32>(f32(wd & mask), f32((wd >> bits) & mask)) + unpack2x16float(lda(sl, (hm + c) >> 1u));
${J((j) => `          { let q = qh[${j * (D / 4)}u + c / 4u]; S${j} += dot(select(q.xy, q.zw, (c & 2u) != 0u), k); }`)}
        }
      } else if (kind == ${SEG_ROWS}u) {
        let o4 = ((sw(sg, 2u) + t - sw(sg, 7u)) * QKVD + (${H}u + h) * D) / 4u;
        for (var c4 = 0u; c4 < D / 4u; c4++) {
          let kv = qkv[o4 + c4];
${J((j) => `          S${j} += dot(kv, qh[${j * (D / 4)}u + c4]);`)}
        }
      } else if (kind == ${SEG_F32}u) {
        let o = pg.y + h * sw(sg, 6u) + pg.z * D;
        for (var c4 = 0u; c4 < D / 4u; c4++) {
          let kv = vec4<f32>(bitcast<f32>(lda(sl, o + c4 * 4u)), bitcast<f32>(lda(sl, o + c4 * 4u + 1u)), bitcast<f32>(lda(sl, o + c4 * 4u + 2u)), bitcast<f32>(lda(sl, o + c4 * 4u + 3u)));
${J((j) => `          S${j} += dot(kv, qh[${j * (D / 4)}u + c4]);`)}
        }
      } else {
        let o = pg.y + h * sw(sg, 6u) + pg.z * (D / 2u);
        for (var c4 = 0u; c4 < D / 4u; c4++) {
          let kv = vec4<f32>(unpack2x16float(lda(sl, o + c4 * 2u)), unpack2x16float(lda(sl, o + c4 * 2u + 1u)));
${J((j) => `          S${j} += dot(kv, qh[${j * (D / 4)}u + c4]);`)}
        }
      }
${J((j) => `      s${j} = S${j};\n      if (s${j} > M${j}) { atomicMax(&wm[${j}u], ord(s${j})); }`)}
    }
    workgroupBarrier();
${rescale()}
    if (li < n) {
${J((j) => `      let p${j} = exp(s${j} - M${j});\n      l${j} += p${j};`)}
${range(NQ4)
  .map(
    (jj) =>
      `      pw[li * ${NQ4}u + ${jj}u] = vec4<f32>(${range(4)
        .map((e) => (jj * 4 + e < NQ ? `p${jj * 4 + e}` : '0.0'))
        .join(', ')});`,
  )
  .join('\n')}
      // Where this token's value lives (read back by the value threads).
      var vs = vseg;
      loop { if (t < seg_end(vs)) { break; } vs += 1u; }
      let pg = seg_at(vs, t);
      let info = (sw(vs, 0u) & 0xffffu) | (pg.x << 16u);
      let kind = info & 0xffu;
      var r0 = 0u;
      var r1 = 0u;
      var r2 = 0u;
      if (kind == ${SEG_KIVI_V}u) {
        let cap = sw(vs, 4u);
        let vbase = pg.y + h * sw(vs, 6u);
        let wpr = D * ((info >> 8u) & 0xffu) / 32u;
        r0 = vbase + pg.z * wpr;
        r1 = (vbase + cap * wpr) * 2u + pg.z * (D / vG);
        r2 = r1 + cap * (D / vG);
      } else if (kind == ${SEG_F32}u) {
        r0 = pg.y + h * sw(vs, 6u) + pg.z * D;
      } else if (kind == ${SEG_ROWS}u) {
        r0 = (sw(vs, 2u) + t - sw(vs, 7u)) * QKVD + (${H + KV}u + h) * D;
      } else {
        r0 = pg.y + h * sw(vs, 6u) + pg.z * (D / 2u);
      }
      vti[li * 4u] = info;
      vti[li * 4u + 1u] = r0;
      vti[li * 4u + 2u] = r1;
      vti[li * 4u + 3u] = r2;
    }
    workgroupBarrier();
    for (var tt = lane; tt < n; tt += LANES) {
${range(NQ4)
  .map((jj) => `      let pv${jj} = pw[tt * ${NQ4}u + ${jj}u];`)
  .join('\n')}
${J((j) => `      let p${j} = pv${j >> 2}${comp(j)};`)}
      let info = vti[tt * 4u];
      let kind = info & 0xffu;
      let sl = info >> 16u;
      let r0 = vti[tt * 4u + 1u];
      let r1 = vti[tt * 4u + 2u];
      let r2 = vti[tt * 4u + 3u];
      {
${slowValue()}      }
    }
    workgroupBarrier();
  }
  // ---- the threads' softmax sums (all heads at once), then per query head the value lanes' sums: the
  // output or a partial ----
  workgroupBarrier();
${range(NQ4)
  .map(
    (jj) =>
      `  pw[li * ${NQ4}u + ${jj}u] = vec4<f32>(${range(4)
        .map((e) => (jj * 4 + e < NQ ? `l${jj * 4 + e}` : '0.0'))
        .join(', ')});`,
  )
  .join('\n')}
  workgroupBarrier();
${range(NQ4)
  .map((jj) => `  var L${jj} = vec4<f32>(0.0);\n  for (var u = 0u; u < WG; u++) { L${jj} += pw[u * ${NQ4}u + ${jj}u]; }`)
  .join('\n')}
${J(
  (j) => `  {
${range(CW / 4)
  .map(
    (k4) =>
      `    qsf[(lane * D + c0) / 4u + ${k4}u] = vec4<f32>(${range(4)
        .map((e) => `${f32lit(vf[k4 * 4 + e]!)} * (a${j}_${k4 * 4 + e} - W${j}) + B${j}`)
        .join(', ')});`,
  )
  .join('\n')}
    workgroupBarrier();
    for (var c = li; c < D; c += WG) {
      var o = 0.0;
      for (var u = 0u; u < LANES; u++) { o += qsf[(u * D + c) / 4u][c % 4u]; }
      let L = L${j >> 2}${comp(j)};
      if (pidx == ${NO_PARTIAL}u) {
        att[qrow * ${H * D}u + (h * NQ + ${j}u) * D + c] = o / L;
      } else {
        let pb = pidx * ${NQ * (D + 4)}u + ${j * (D + 4)}u;
        part[pb + 4u + c] = o;
        if (c == 0u) {
          part[pb] = M${j};
          part[pb + 1u] = L;
        }
      }
    }
    workgroupBarrier();
  }`,
)}
}`;

  // The softmax's new maximum after a tile's scores; everything accumulated so far rescaled if it rose.
  function rescale(): string {
    return J(
      (j) => `    {
      let mn = unord(atomicLoad(&wm[${j}u]));
      if (mn > M${j}) {
        let al = exp(M${j} - mn);
        l${j} *= al;
        W${j} *= al;
        B${j} *= al;
${range(CW)
  .map((k) => `        a${j}_${k} *= al;`)
  .join('\n')}
        M${j} = mn;
      }
    }`,
    );
  }

  // The fast loop over [ta, fe).
  function fastLoop(): string {
    const NKWv = NKW;
    const cpwv = 32 / VB;
    // A token's key row from its slot x within page kpi onwards (x < 4·kcap: at most a few steps).
    const keyLoads = (dst: string, x: string, ind: string) =>
      `${ind}{\n${ind}  var x = ${x};\n${ind}  var pi = kpi;\n${ind}  loop { if (x < kcap) { break; } x -= kcap; pi += 1u; }\n` +
      `${ind}  let pg = page(kseg, pi);\n${ind}  let row = pg.y + h * ksec + x * ${NKWv}u;\n${range(NKWv)
        .map((w) => `${ind}  ${dst}${w} = lda(pg.x, row + ${w}u);`)
        .join('\n')}\n${ind}}\n`;
    // Scales and minimums of a tile's key groups (fold threads: slot 0 = the group of the tile's first
    // token at (pi, gi), slot 1 = the next group, where the tile reaches it), 16 channels a thread.
    const foldLoads = (pi: string, gi: string, ind: string) =>
      `${ind}if (li < ${2 * NCH}u) {\n${ind}  var fpi = ${pi};\n${ind}  var fgi = ${gi};\n` +
      `${ind}  if (li >= ${NCH}u) {\n${ind}    fgi += 1u;\n${ind}    if (fgi * kG >= kcap) { fgi = 0u; fpi += 1u; }\n${ind}  }\n` +
      `${ind}  let pg = page(kseg, fpi);\n${ind}  let base = pg.y + h * ksec;\n` +
      `${ind}  let hs = (base + kcap * ${NKWv}u) * 2u + fgi * D + (li % ${NCH}u) * 16u;\n${ind}  let hm = hs + (kcap / kG) * D;\n` +
      range(8)
        .map((k) => `${ind}  fs${k} = lda(pg.x, (hs >> 1u) + ${k}u);\n${ind}  fm${k} = lda(pg.x, (hm >> 1u) + ${k}u);`)
        .join('\n') +
      `\n${ind}}\n`;
    return `  if (fe > ta) {
    // ---- the fast path: tokens [ta, fe) in one KIVI key segment and one KIVI value segment ----
    let ksec = sw(kseg, 6u);
    let kcap = sw(kseg, 4u);
    let kG = sw(kseg, 5u);
    let vsec = sw(vseg, 6u);
    let vcap = sw(vseg, 4u);
    // Where the tile's first token sits, kept by steps of 64 tokens (no division per tile): key page kpi,
    // group kgi within it, position kgr within the group; value page vpi, slot vrem.
    let rk = sw(kseg, 3u) + ta - sw(kseg, 7u);
    var kpi = rk / kcap;
    var kgi = (rk % kcap) / kG;
    var kgr = rk % kG;
    let rv = sw(vseg, 3u) + ta - sw(vseg, 7u);
    var vpi = rv / vcap;
    var vrem = rv % vcap;
    let ngv = D / vG;
    // This value thread's group, and where its channels sit in their code word.
    let vg = c0 / vG;
    let vw = c0 / ${cpwv}u;
    let vsh = (c0 % ${cpwv}u) * ${VB}u;
${range(NKWv)
  .map((w) => `    var kc${w} = 0u;${prefetch ? `\n    var kn${w} = 0u;` : ''}`)
  .join('\n')}
${range(8)
  .map((k) => `    var fs${k} = 0u;\n    var fm${k} = 0u;`)
  .join('\n')}
    // Prologue: the first tile's key rows and folded query.
${prefetch ? keyLoads('kc', 'kgi * kG + kgr + min(li, fe - 1u - ta)', '    ') : ''}${foldLoads('kpi', 'kgi', '    ')}    if (li < ${2 * NCH}u) {
      let nb = 0u;
      let sl = li / ${NCH}u;
      let ch = li % ${NCH}u;
      let ob = (sl * NQ) * ${D / 4}u;
${fold()}    }
    workgroupBarrier();
    var buf = 0u;
    for (var t0 = ta; t0 < fe; t0 += WG) {
      let n = min(WG, fe - t0);
      let t = t0 + li;
      let more = t0 + WG < fe;
      // The next tile's place (uniform).
      var nkpi = kpi;
      var nkgi = kgi;
      var nkgr = kgr + WG;
      loop {
        if (nkgr < kG) { break; }
        nkgr -= kG;
        nkgi += 1u;
        if (nkgi * kG >= kcap) { nkgi = 0u; nkpi += 1u; }
      }
      // ---- A: issue this tile's value loads and the next tile's key loads, then score ----
${prefetch ? '' : keyLoads('kc', 'kgi * kG + kgr + min(li, fe - 1u - t0)', '      ')}      let pv = vec3<u32>(page(vseg, vpi), vrem);
      let vbase = pv.y + h * vsec;
      let vs0 = (vbase + vcap * ${(D * VB) / 32}u) * 2u + (pv.z + li) * ngv;
      let vm0 = vs0 + vcap * ngv;
      let sa = lda(pv.x, vs0 >> 1u);
      let sb = lda(pv.x, (vs0 >> 1u) + 1u);
      let ma = lda(pv.x, vm0 >> 1u);
      let mb = lda(pv.x, (vm0 >> 1u) + 1u);
${range(TPT)
  .map((i) => `      let vc${i} = lda(pv.x, vbase + (pv.z + lane + ${i * LANES}u) * ${(D * VB) / 32}u + vw);`)
  .join('\n')}
      if (more) {
${prefetch ? keyLoads('kn', 'kgi * kG + kgr + min(li + WG, fe - 1u - t0)', '        ') : ''}${foldLoads('nkpi', 'nkgi', '        ')}      }
      // Tokens from bnd on are in the tile's second key group (fold slot 1).
      let bnd = t0 + kG - kgr;
      let slot = select(0u, 1u, t >= bnd);
      let qb = (buf * 2u + slot) * NQ * ${D / 4}u;
${J((j) => `      var S${j} = 0.0;`)}
${fastScore()}
${range(NQ4)
  .map((jj) => `      var bias${jj} = vec4<f32>(0.0);`)
  .join('\n')}
      for (var c = 0u; c < ${NCH}u; c++) {
${range(NQ4)
  .map((jj) => `        bias${jj} += qbp[((buf * 2u + slot) * ${NCH}u + c) * ${NQ4}u + ${jj}u];`)
  .join('\n')}
      }
${J((j) => `      var s${j} = select(neg_inf(), S${j} + bias${j >> 2}${comp(j)}, li < n);\n      if (s${j} > M${j}) { atomicMax(&wm[${j}u], ord(s${j})); }`)}
      workgroupBarrier();
      // ---- B: new maximum, weights, p·scale and p·min per value group; fold the next tile's keys ----
${rescale()}
      {
${J((j) => `        let p${j} = select(0.0, exp(s${j} - M${j}), li < n);\n        l${j} += p${j};`)}
        for (var g = 0u; g < ngv; g++) {
          let hi = (vs0 & 1u) + g;
          let sv = hf(select(sa, sb, hi >= 2u), hi);
          let mv = hf(select(ma, mb, hi >= 2u), hi);
${range(NQ4)
  .map(
    (jj) =>
      `          let pp${jj} = vec4<f32>(${range(4)
        .map((e) => (jj * 4 + e < NQ ? `p${jj * 4 + e}` : '0.0'))
        .join(', ')});\n` +
      `          wsb[((li * ${NGV_MAX}u + g) * 2u) * ${NQ4}u + ${jj}u] = select(vec4<f32>(0.0), pp${jj} * sv, li < n);\n` +
      `          wsb[((li * ${NGV_MAX}u + g) * 2u + 1u) * ${NQ4}u + ${jj}u] = select(vec4<f32>(0.0), pp${jj} * mv, li < n);`,
  )
  .join('\n')}
        }
      }
      if (more && li < ${2 * NCH}u) {
        let nb = buf ^ 1u;
        let sl = li / ${NCH}u;
        let ch = li % ${NCH}u;
        let ob = ((nb * 2u + sl) * NQ) * ${D / 4}u;
${fold()}      }
      workgroupBarrier();
      // ---- C: values ----
${fastValues()}
${range(prefetch ? NKWv : 0)
  .map((w) => `      kc${w} = kn${w};`)
  .join('\n')}
      buf ^= 1u;
      kpi = nkpi;
      kgi = nkgi;
      kgr = nkgr;
      vrem += WG;
      if (vrem >= vcap) { vrem = 0u; vpi += 1u; }
    }
  }`;
  }
}
