/**
 * The WebGPU back end on SwiftShader (a Vulkan driver on the CPU; CI has no GPU): the op-table
 * conformance suite against the TypeScript reference with the GPU's kernels, for every cache kind the
 * GPU runs and every weight type; then what is the GPU's own: the software adapter's matmul giving the
 * same bits, weights and cache arenas split over several bindings, bit-exact quantized pages, fake
 * specs refused, the random fill.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { ALL_SPECS, backendConformance, randArray, rng, to16 } from './backend-conformance.js';
import { reportMissing, swiftshaderBackend } from './webgpu-helpers.js';
import type { WebGpuBackend } from '../src/kernels/webgpu/backend.js';
import type { WebGpuOptions } from '../src/kernels/webgpu/device.js';

const made: WebGpuBackend[] = [];
async function gpu(o: Omit<WebGpuOptions, 'swiftshader'> = {}): Promise<WebGpuBackend> {
  const b = await swiftshaderBackend(o);
  made.push(b);
  return b;
}
after(() => {
  for (const b of made) b.dispose();
});

if (!reportMissing('kernels-webgpu')) {
  // The kernels a GPU runs (SwiftShader would otherwise take the one-thread-per-output matmul).
  // Quantized attention reads a code c as the float 1 + c·2^-b and takes the 1's away through the folded
  // sums, which costs a few bits of float32 against the reference's double sums: measured up to ~2e-5
  // of the output's largest element on this suite's outlier channels (float kernels: < 1e-5).
  backendConformance('webgpu (SwiftShader)', () => gpu({ serialMatmul: false }), {
    specs: ALL_SPECS.filter((s) => !s.startsWith('fake')),
    weightTypes: ['f32', 'f16', 'bf16'],
    kiviRelTol: 1e-4,
  });
}
