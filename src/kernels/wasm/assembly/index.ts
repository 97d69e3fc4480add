/** The kernel module's exports. Pointers are byte offsets into the (shared) imported memory. */
export { matmul } from './matmul';
export { matmul_bf16, matmul_f16, matmul16_scratch_per_input } from './matmul16';
export { scores_f32, scores_f16, accum_f32, accum_f16 } from './dense';
export { scores_kivi, accum_kivi, kivi_work_bytes } from './kivi';
export { softmax, swiglu } from './softmax';
export { attend_task, task_scratch_bytes } from './task';
export { fwht_rows } from './hadamard';
