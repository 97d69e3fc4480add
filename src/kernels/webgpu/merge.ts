/**
 * WGSL of the merge: a task too long for one attention workgroup is split over many (flash-decoding),
 * each writing its partial maximum, sum and output; the merge combines them, one workgroup per (merge
 * item, query head), threads over slices of the partials.
 */
import type { AttnShape } from '../types.js';
import { GTASK_WORDS, MERGE_WORDS } from './records.js';
import { GRID } from './wgsl.js';

/** Threads of a merge workgroup. */
const MERGE_WG = 256;

/**
 * Combine the partials of the splits of each (task, kv head): one workgroup per (merge item, query
 * head); threads over (a slice of the partials, 8 channels), four partials' loads in flight at a time.
 */
export function mergeWgsl(shape: AttnShape): string {
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const NQ = H / KV;
  const PS = D + 4;
  const QG = D / 8;
  const RS = MERGE_WG / QG;
  return /* wgsl */ `
const MT = ${MERGE_WG}u;
const RS = ${RS}u;
struct P { items: u32, n: u32, tasks: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> plan: array<u32>;
@group(0) @binding(2) var<storage, read> part: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> att: array<f32>;
${GRID}
var<workgroup> red: array<f32, ${MERGE_WG + 16}>;
var<workgroup> ob: array<vec4<f32>, ${(RS * D) / 4}>;
var<workgroup> lb: array<f32, ${RS}>;

// Partial s of the item as vec4s: (maximum, sum, 0, 0), then D outputs.
fn pv(s: u32, j: u32, k: u32) -> vec4<f32> { return part[(s * ${NQ * PS}u + j * ${PS}u) / 4u + k]; }

@compute @workgroup_size(${MERGE_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let wg = wg_index(wid, nw);
  let it = wg / ${NQ}u;
  let j = wg % ${NQ}u;
  if (it >= p.n) { return; }
  let ib = p.items + it * ${MERGE_WORDS}u;
  let row = plan[p.tasks + plan[ib] * ${GTASK_WORDS}u];
  let h = plan[ib + 1u];
  let p0 = plan[ib + 2u];
  let np = plan[ib + 3u];
  var mx = neg_inf();
  for (var s = li; s < np; s += MT) { mx = max(mx, pv(p0 + s, j, 0u).x); }
  red[li] = mx;
  workgroupBarrier();
  if (li < 16u) {
    var m = red[li * 16u];
    for (var k = 1u; k < 16u; k++) { m = max(m, red[li * 16u + k]); }
    red[MT + li] = m;
  }
  workgroupBarrier();
  var M = red[MT];
  for (var k = 1u; k < 16u; k++) { M = max(M, red[MT + k]); }
  let r = li / ${QG}u;
  let q = li % ${QG}u;
  var L = 0.0;
  var o0 = vec4<f32>(0.0);
  var o1 = vec4<f32>(0.0);
  var s = r;
  for (; s + 3u * RS < np; s += 4u * RS) {
    let ha = pv(p0 + s, j, 0u);
    let hb = pv(p0 + s + RS, j, 0u);
    let hc = pv(p0 + s + 2u * RS, j, 0u);
    let hd = pv(p0 + s + 3u * RS, j, 0u);
    let xa0 = pv(p0 + s, j, 1u + q * 2u);
    let xa1 = pv(p0 + s, j, 2u + q * 2u);
    let xb0 = pv(p0 + s + RS, j, 1u + q * 2u);
    let xb1 = pv(p0 + s + RS, j, 2u + q * 2u);
    let xc0 = pv(p0 + s + 2u * RS, j, 1u + q * 2u);
    let xc1 = pv(p0 + s + 2u * RS, j, 2u + q * 2u);
    let xd0 = pv(p0 + s + 3u * RS, j, 1u + q * 2u);
    let xd1 = pv(p0 + s + 3u * RS, j, 2u + q * 2u);
    let ea = exp(ha.x - M);
    let eb = exp(hb.x - M);
    let ec = exp(hc.x - M);
    let ed = exp(hd.x - M);
    L += (ha.y * ea + hb.y * eb) + (hc.y * ec + hd.y * ed);
    o0 += (xa0 * ea + xb0 * eb) + (xc0 * ec + xd0 * ed);
    o1 += (xa1 * ea + xb1 * eb) + (xc1 * ec + xd1 * ed);
  }
  for (; s < np; s += RS) {
    let hx = pv(p0 + s, j, 0u);
    let e = exp(hx.x - M);
    L += hx.y * e;
    o0 += pv(p0 + s, j, 1u + q * 2u) * e;
    o1 += pv(p0 + s, j, 2u + q * 2u) * e;
  }
  ob[r * ${D / 4}u + q * 2u] = o0;
  ob[r * ${D / 4}u + q * 2u + 1u] = o1;
  if (q == 0u) { lb[r] = L; }
  workgroupBarrier();
  for (var c = li; c < ${D}u; c += MT) {
    var O = 0.0;
    var LL = 0.0;
    for (var rr = 0u; rr < RS; rr++) {
      O += ob[rr * ${D / 4}u + c / 4u][c % 4u];
      LL += lb[rr];
    }
    att[row * ${H * D}u + (h * ${NQ}u + j) * ${D}u + c] = O / LL;
  }
}`;
}
