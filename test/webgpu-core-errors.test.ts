/**
 * How the WebGPU back end reports a device's errors (core.ts GpuCore.check): out of memory as a user's
 * error (a KiviError, which the CLI prints as one line; a 503 from the server, whose resources ran out),
 * anything else as a bug, each with the first line of the device's message. A stand-in device: no GPU can
 * be made to run out of memory on purpose in CI.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GpuCore } from '../src/kernels/webgpu/core.js';
import { KiviError } from '../src/util/errors.js';

class GPUOutOfMemoryError extends Error {}
class GPUValidationError extends Error {}

class StandInDevice extends EventTarget {
  readonly queue = {};
  readonly lost = new Promise<never>(() => {});
  createBuffer(d: { size: number }) {
    return { size: d.size, destroy() {} };
  }
  report(error: Error): void {
    this.dispatchEvent(Object.assign(new Event('uncapturederror'), { error }));
  }
}

function core(): { dev: StandInDevice; c: GpuCore } {
  (globalThis as { GPUBufferUsage?: object }).GPUBufferUsage ??= {
    MAP_READ: 1,
    MAP_WRITE: 2,
    COPY_SRC: 4,
    COPY_DST: 8,
    INDEX: 16,
    VERTEX: 32,
    UNIFORM: 64,
    STORAGE: 128,
  };
  const dev = new StandInDevice();
  return { dev, c: new GpuCore(dev as unknown as GPUDevice) };
}

test('webgpu: out of GPU memory is a one-line user error naming the cause; other device errors are bugs', () => {
  const a = core();
  a.c.check();
  assert.equal(a.c.failure, null, 'no failure before the device reports one');
  a.dev.report(new GPUOutOfMemoryError('vkAllocateMemory failed with VK_ERROR_OUT_OF_DEVICE_MEMORY\n - While calling CreateBuffer'));
  a.dev.report(new GPUValidationError('[Invalid BindGroup] is invalid due to a previous error.'));
  assert.throws(
    () => a.c.check(),
    (e: unknown) =>
      e instanceof KiviError &&
      e.status === 503 &&
      e.message.startsWith('webgpu: out of GPU memory (vkAllocateMemory failed with VK_ERROR_OUT_OF_DEVICE_MEMORY): ') &&
      e.message.includes('kivi2') &&
      !e.message.includes('\n'),
  );

  assert.match(a.c.failure ?? '', /^webgpu: out of GPU memory \(vkAllocateMemory failed with VK_ERROR_OUT_OF_DEVICE_MEMORY\): /);

  // Recognised by its class whatever the wording, and by its message where the class is not the spec's.
  const d = core();
  d.dev.report(new GPUOutOfMemoryError('Allocation of 4294967296 bytes failed'));
  assert.throws(
    () => d.c.check(),
    (e: unknown) => e instanceof KiviError && e.message.startsWith('webgpu: out of GPU memory (Allocation of 4294967296 bytes failed): '),
  );
  const b = core();
  b.dev.report(new GPUValidationError('Out of device memory while allocating a buffer'));
  assert.throws(
    () => b.c.check(),
    (e: unknown) => e instanceof KiviError && e.message.startsWith('webgpu: out of GPU memory (Out of device memory'),
  );

  const c = core();
  c.dev.report(new GPUValidationError('Binding size 64 is smaller than the minimum binding size 256.\n - While validating entries'));
  assert.throws(
    () => c.c.check(),
    (e: unknown) => e instanceof Error && !(e instanceof KiviError) && e.message === 'webgpu: Binding size 64 is smaller than the minimum binding size 256.',
  );
});
