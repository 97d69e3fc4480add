/**
 * JOB_ROTATE on the GPU (`rot=hadamard`, kernels/layout.ts): the orthonormal Walsh–Hadamard transform of
 * every query head and key head of a run of qkv rows, in place. One workgroup per (row, head), one thread
 * per butterfly: log2(d) stages h = 1, 2, …, d/2 on a workgroup copy of the head, then × fround(1/√d) —
 * src/quant/hadamard.ts's order, so the result is the reference's bit for bit (WGSL's f32 +, −, × are
 * correctly rounded).
 */
import { GRID } from './wgsl.js';

export function rotateWgsl(d: number): string {
  return /* wgsl */ `
const D = ${d}u;
struct P { r0: u32, n: u32, heads: u32, stride: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
${GRID}
var<workgroup> x: array<f32, ${d}>;

@compute @workgroup_size(${d / 2})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let it = wg_index(wid, nw);
  if (it >= p.n * p.heads) { return; }
  let base = (p.r0 + it / p.heads) * p.stride + (it % p.heads) * D;
  x[li] = qkv[base + li];
  x[li + D / 2u] = qkv[base + li + D / 2u];
  workgroupBarrier();
  for (var h = 1u; h < D; h = h * 2u) {
    let j = (li / h) * 2u * h + li % h;
    let a = x[j];
    let b = x[j + h];
    x[j] = a + b;
    x[j + h] = a - b;
    workgroupBarrier();
  }
  qkv[base + li] = x[li] * p.scale;
  qkv[base + li + D / 2u] = x[li + D / 2u] * p.scale;
}`;
}
