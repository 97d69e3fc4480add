/**
 * WGSL of a step's cache jobs: one workgroup per (job, kv head): store new tokens into float32/float16
 * pages, quantize a key block per channel, quantize value tokens per token (bit-exact with
 * quant/quantizer.ts: exact float16 rounding and a correctly rounded division; see wgsl.ts).
 */
import { JOB_QKEY, JOB_QVAL, JOB_STORE, JOB_VALUES, JOB_WORDS, SEG_F32, SEG_ROWS } from '../layout.js';
import type { AttnShape } from '../types.js';
import { arenaDecls, arenaSwitch } from './arenas.js';
import { GSEG_WORDS, JOBITEM_WORDS } from './records.js';
import { CONVERT, DIVIDE, GRID } from './wgsl.js';

/** Values (or codes) staged in workgroup memory by a quantization job per pass. */
const JOB_BUF = 1024;
/** Per-(token, group) parameters a value job keeps per pass. */
const JOB_PARAMS = 256;
/** Threads of a job's workgroup. */
const JOB_WG = 128;

/**
 * The cache jobs of one phase: store, quantize key blocks, quantize value tokens. One workgroup per
 * (job, kv head), all its threads on one job: the source values are read in passes of a few tokens by
 * every thread at once (one load each) and staged in workgroup memory, so the minimum, maximum and codes
 * of a group are found without a chain of dependent loads per thread (a job is latency, not bytes: it
 * runs once per layer and step beside attention).
 */
export function jobsWgsl(shape: AttnShape, na: number): string {
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const QKVD = (H + 2 * KV) * D;
  // A key job's thread keeps the ranges of two channels, a value job's parameters fit JOB_PARAMS.
  const most = Math.min(JOB_PARAMS, 2 * JOB_WG);
  if (D > most) throw new Error(`webgpu: cache jobs for a head size of ${D} (at most ${most})`);
  return /* wgsl */ `
const D = ${D}u;
const WG = ${JOB_WG}u;
const TB = ${Math.max(1, Math.floor(JOB_BUF / D))}u;
struct P { items: u32, n: u32, jobs: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> plan: array<u32>;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
${arenaDecls('u32', 'read_write', 3, na)}
${CONVERT}
${DIVIDE}
${GRID}
// A pass's source values (float bits) or codes; per channel (keys) or per token group (values) the
// scale and minimum as floats and as float16 halves (scale | minimum << 16).
var<workgroup> buf: array<u32, ${JOB_BUF}>;
var<workgroup> ps: array<f32, ${JOB_PARAMS}>;
var<workgroup> pm: array<f32, ${JOB_PARAMS}>;
var<workgroup> ph: array<u32, ${JOB_PARAMS}>;

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

// A group's (scale, minimum) as float16 bits, as quant/quantizer.ts quantizeGroup computes them.
fn params(lo: f32, hi: f32, maxc: f32) -> u32 {
  return f32_to_f16(div_rn(hi - lo, maxc)) | (f32_to_f16(lo) << 16u);
}

fn code(v: f32, s: f32, m: f32, maxc: f32) -> u32 {
  if (s == 0.0) { return 0u; }
  return u32(clamp(rhe(div_rn(v - m, s)), 0.0, maxc));
}

@compute @workgroup_size(${JOB_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let it = wg_index(wid, nw);
  if (it >= p.n) { return; }
  let jb = p.jobs + plan[p.items + it * ${JOBITEM_WORDS}u] * ${JOB_WORDS}u;
  let h = plan[p.items + it * ${JOBITEM_WORDS}u + 1u];
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
    // Per channel over each group of G tokens: the range from passes of TB tokens, then the codes.
    let mbase = sbase + (cap / G) * D;
    for (var g = 0u; g < cap / G; g++) {
      // Thread li keeps the range of channel li and (D > WG) of channel li + WG: D ≤ 2·WG.
      var lo0 = pos_inf();
      var hi0 = neg_inf();
      var lo1 = pos_inf();
      var hi1 = neg_inf();
      for (var i0 = 0u; i0 < G; i0 += TB) {
        let nt = min(TB, G - i0);
        for (var idx = li; idx < nt * D; idx += WG) { buf[idx] = bitcast<u32>(src(s0, sn, part, h, g * G + i0 + idx / D, idx % D)); }
        workgroupBarrier();
        for (var k = 0u; k < nt; k++) {
          if (li < D) {
            let v = bitcast<f32>(buf[k * D + li]);
            lo0 = min(lo0, v);
            hi0 = max(hi0, v);
          }
          if (li + WG < D) {
            let v = bitcast<f32>(buf[k * D + li + WG]);
            lo1 = min(lo1, v);
            hi1 = max(hi1, v);
          }
        }
        workgroupBarrier();
      }
      for (var c = li; c < D; c += WG) {
        let pr = params(select(lo0, lo1, c >= WG), select(hi0, hi1, c >= WG), maxc);
        ph[c] = pr;
        ps[c] = f16_to_f32(pr & 0xffffu);
        pm[c] = f16_to_f32(pr >> 16u);
      }
      workgroupBarrier();
      for (var cp = li; cp < D / 2u; cp += WG) {
        let a = ph[cp * 2u];
        let b = ph[cp * 2u + 1u];
        sta(dsl, (sbase + g * D + cp * 2u) / 2u, (a & 0xffffu) | (b << 16u));
        sta(dsl, (mbase + g * D + cp * 2u) / 2u, (a >> 16u) | (b & 0xffff0000u));
      }
      // The group's values again, now as codes (the whole group would not fit workgroup memory at once).
      for (var i0 = 0u; i0 < G; i0 += TB) {
        let nt = min(TB, G - i0);
        for (var idx = li; idx < nt * D; idx += WG) {
          let c = idx % D;
          buf[idx] = code(src(s0, sn, part, h, g * G + i0 + idx / D, c), ps[c], pm[c], maxc);
        }
        workgroupBarrier();
        for (var idx = li; idx < nt * wpr; idx += WG) {
          let tk = idx / wpr;
          let o = tk * D + (idx % wpr) * cpw;
          var word = 0u;
          for (var k = 0u; k < cpw; k++) { word = word | (buf[o + k] << (k * dbits)); }
          sta(dsl, dbase + (g * G + i0 + tk) * wpr + idx % wpr, word);
        }
        workgroupBarrier();
      }
    }
    return;
  }
  if (kind == ${JOB_QVAL}u) {
    // Per token and group of G channels, in passes of tokens: the values staged, one thread per group
    // finds its range, one thread per value its code, one thread per code word packs them. Parameters
    // are halves [slot][group], two a word; a word shared with a token outside the pass keeps that half.
    let gpt = D / G;
    let tb = max(1u, min(TB, ${JOB_PARAMS}u / gpt));
    let mbase = sbase + cap * gpt;
    for (var i0 = 0u; i0 < dn; i0 += tb) {
      let nt = min(tb, dn - i0);
      for (var idx = li; idx < nt * D; idx += WG) { buf[idx] = bitcast<u32>(src(s0, sn, part, h, i0 + idx / D, idx % D)); }
      workgroupBarrier();
      for (var q = li; q < nt * gpt; q += WG) {
        let o = (q / gpt) * D + (q % gpt) * G;
        var lo = pos_inf();
        var hi = neg_inf();
        for (var k = 0u; k < G; k++) {
          let v = bitcast<f32>(buf[o + k]);
          lo = min(lo, v);
          hi = max(hi, v);
        }
        let pr = params(lo, hi, maxc);
        ph[q] = pr;
        ps[q] = f16_to_f32(pr & 0xffffu);
        pm[q] = f16_to_f32(pr >> 16u);
      }
      workgroupBarrier();
      // Every value's code by a thread of its own (a code is a correctly rounded division, a chain of
      // ~25 steps: one thread a code word took 16 of them in a row at 2 bits), then one thread a word packs.
      for (var idx = li; idx < nt * D; idx += WG) {
        let q = (idx / D) * gpt + (idx % D) / G;
        buf[idx] = code(bitcast<f32>(buf[idx]), ps[q], pm[q], maxc);
      }
      workgroupBarrier();
      for (var idx = li; idx < nt * wpr; idx += WG) {
        let tk = idx / wpr;
        let o = tk * D + (idx % wpr) * cpw;
        var word = 0u;
        for (var k = 0u; k < cpw; k++) { word = word | (buf[o + k] << (k * dbits)); }
        sta(dsl, dbase + (dt0 + i0 + tk) * wpr + idx % wpr, word);
      }
      for (var arr = 0u; arr < 2u; arr++) {
        let h0 = select(sbase, mbase, arr == 1u) + (dt0 + i0) * gpt;
        let h1 = h0 + nt * gpt;
        for (var wq = h0 / 2u + li; wq <= (h1 - 1u) / 2u; wq += WG) {
          var word = 0u;
          if (wq * 2u < h0 || wq * 2u + 1u >= h1) { word = lda(dsl, wq); }
          for (var hf = 0u; hf < 2u; hf++) {
            let hx = wq * 2u + hf;
            if (hx >= h0 && hx < h1) {
              let v = (ph[hx - h0] >> (arr * 16u)) & 0xffffu;
              word = select((word & 0xffffu) | (v << 16u), (word & 0xffff0000u) | v, hf == 0u);
            }
          }
          sta(dsl, wq, word);
        }
      }
      // The next pass may read back a word this one wrote (a half of its first token's parameters).
      storageBarrier();
      workgroupBarrier();
    }
  }
}`;
}
