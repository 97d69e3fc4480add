/**
 * The demo page: load the model into a worker, generate with one cache or two side by side, and show
 * live KV-cache bytes and speed. The page only draws; every forward pass runs in the worker.
 */

import { cacheBytes } from '../../cache/budget.js';
import { parseKvSpec } from '../../cache/spec.js';
import type { BackendChoice } from '../../kernels/index.js';
import { formatBytes } from '../../util/format.js';
import { KiviWorker } from '../client.js';
import type { ModelInfo, RunResult, RunStats } from '../protocol.js';

/** The caches on offer: label → spec string. */
const CACHES: [string, string][] = [
  ['fp32', 'fp32'],
  ['fp16', 'fp16'],
  ['kivi4', 'kivi4'],
  ['kivi2', 'kivi2'],
  ['kivi2 + fp32 residual', 'kivi:k=2,v=2,g=32,r=128,residual=fp32'],
];
const labelOf = (spec: string) => CACHES.find(([, s]) => s === spec)?.[0] ?? spec;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const el = {
  status: $('model-status'),
  progress: $<HTMLProgressElement>('load-progress'),
  error: $('error'),
  form: $<HTMLFormElement>('controls'),
  prompt: $<HTMLTextAreaElement>('prompt'),
  kvA: $<HTMLSelectElement>('kv-a'),
  kvB: $<HTMLSelectElement>('kv-b'),
  compare: $<HTMLInputElement>('compare'),
  maxTokens: $<HTMLInputElement>('max-tokens'),
  temperature: $<HTMLInputElement>('temperature'),
  seed: $<HTMLInputElement>('seed'),
  run: $<HTMLButtonElement>('run'),
  stop: $<HTMLButtonElement>('stop'),
  runs: $('runs'),
  summary: $('summary'),
  template: $<HTMLTemplateElement>('run-template'),
  projHead: $('projection-head'),
  projBody: $('projection-body'),
};

function showError(message: string): void {
  el.error.textContent = message;
  el.error.hidden = false;
}

for (const sel of [el.kvA, el.kvB]) for (const [label, spec] of CACHES) sel.add(new Option(label, spec));
el.kvA.value = 'kivi2';
el.kvB.value = 'fp16';
el.compare.addEventListener('change', () => (el.kvB.disabled = !el.compare.checked));

/** One output pane. */
class RunView {
  readonly root: HTMLElement;
  readonly ids: number[] = [];
  /** Output text length after each generated token, to mark where two runs diverge. */
  private readonly ends: number[] = [];
  private text = '';
  stats: RunStats | null = null;
  result: RunResult | null = null;
  private readonly q = (c: string) => this.root.querySelector(`.${c}`) as HTMLElement;

  constructor(
    readonly spec: string,
    prompt: string,
  ) {
    this.root = (el.template.content.firstElementChild as HTMLElement).cloneNode(true) as HTMLElement;
    this.q('spec').textContent = labelOf(spec);
    this.q('spec').title = spec;
    this.q('prompt-text').textContent = prompt;
    el.runs.append(this.root);
  }

  push(token: number | null, text: string, stats: RunStats): void {
    if (token !== null) this.ids.push(token);
    this.text += text;
    if (token !== null) this.ends.push(this.text.length);
    else if (this.ends.length > 0) this.ends[this.ends.length - 1] = this.text.length;
    this.stats = stats;
  }

  /** Redraw; `agree` = leading tokens equal to the other run's, `maxBytes` = the larger cache's bytes. */
  draw(agree: number | null, maxBytes: number): void {
    const s = this.result ?? this.stats;
    if (s) {
      this.q('kv').textContent = formatBytes(s.kvBytes);
      this.q('kv').dataset.bytes = String(s.kvBytes);
      this.q('cached').textContent = String(s.cacheTokens);
      this.q('tokens').textContent = String(s.tokens);
      this.q('speed').textContent = s.tokensPerSecond > 0 ? s.tokensPerSecond.toFixed(1) : '–';
      this.q('speed').dataset.value = String(s.tokensPerSecond);
      this.q('first').textContent = `${(s.firstTokenSeconds * 1000).toFixed(0)} ms`;
      this.q('fill').style.width = `${maxBytes > 0 ? (100 * s.kvBytes) / maxBytes : 0}%`;
    }
    const out = this.q('output');
    const box = this.q('text');
    // Follow the stream unless the reader has scrolled up.
    const follow = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    const cut = agree === null || agree >= this.ids.length ? this.text.length : agree === 0 ? 0 : this.ends[agree - 1]!;
    const same = document.createTextNode(this.text.slice(0, cut));
    const rest = document.createElement('span');
    rest.className = 'diverged';
    rest.textContent = this.text.slice(cut);
    rest.title = 'differs from the other cache from here';
    out.replaceChildren(same, ...(rest.textContent ? [rest] : []));
    if (follow) box.scrollTop = box.scrollHeight;
  }
}

function commonPrefix(a: number[], b: number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

function drawAll(views: RunView[]): void {
  const bytes = views.map((v) => (v.result ?? v.stats)?.kvBytes ?? 0);
  const max = Math.max(...bytes);
  const [a, b] = views;
  // Tokens agree up to the shorter run's length; mark divergence once both have reached it.
  const agree = a && b ? commonPrefix(a.ids, b.ids) : null;
  for (const v of views) v.draw(agree, max);
  if (!a || !b || !a.stats || !b.stats) {
    el.summary.textContent = '';
    return;
  }
  const sa = a.result ?? a.stats;
  const sb = b.result ?? b.stats;
  const T = Math.max(sa.cacheTokens, sb.cacheTokens);
  const ratio = sa.kvBytes > 0 && sb.kvBytes > 0 ? sa.kvBytes / sb.kvBytes : 1;
  const cmp = ratio <= 1 ? `${(1 / ratio).toFixed(2)}× less than` : `${ratio.toFixed(2)}× more than`;
  let line =
    `At ${T} cached tokens, ${labelOf(a.spec)} holds ${formatBytes(sa.kvBytes)} of KV cache, ` + `${cmp} ${labelOf(b.spec)} (${formatBytes(sb.kvBytes)}).`;
  const n = Math.min(a.ids.length, b.ids.length);
  if (agree !== null && n > 0)
    line +=
      agree >= n ? ` The outputs agree on all ${n} tokens so far.` : ` The outputs agree on the first ${agree} tokens (highlighted from where they differ).`;
  if ([a, b].some((v) => v.spec.startsWith('kivi')) && T < 256) {
    line += ' (KIVI keeps the newest tokens in full precision, so it pays off on longer contexts: see the table.)';
  }
  line += ' Both run in one batch, one forward pass per step; tokens/s is per sequence.';
  el.summary.textContent = line;
}

function drawProjection(info: ModelInfo): void {
  const dims = { numLayers: info.numLayers, numHeads: info.numHeads, numKvHeads: info.numKvHeads, headDim: info.headDim };
  const lengths = [128, 512, 1024, info.maxPositions].filter((t, i, all) => t <= info.maxPositions && all.indexOf(t) === i);
  el.projHead.replaceChildren(...['cache', ...lengths.map((t) => `${t} tokens`)].map((t) => Object.assign(document.createElement('th'), { textContent: t })));
  const fp16 = parseKvSpec('fp16');
  el.projBody.replaceChildren(
    ...CACHES.map(([label, spec]) => {
      const tr = document.createElement('tr');
      tr.append(Object.assign(document.createElement('td'), { textContent: label, title: spec }));
      for (const t of lengths) {
        const b = cacheBytes(parseKvSpec(spec), dims, t);
        const x = cacheBytes(fp16, dims, t) / b;
        tr.append(Object.assign(document.createElement('td'), { textContent: `${formatBytes(b)} (${x.toFixed(2)}× fp16)` }));
      }
      return tr;
    }),
  );
}

let worker: KiviWorker | undefined;
let abort: AbortController | undefined;

async function run(): Promise<void> {
  if (!worker) return;
  el.error.hidden = true;
  const specs = el.compare.checked ? [el.kvA.value, el.kvB.value] : [el.kvA.value];
  const options = {
    maxTokens: Number(el.maxTokens.value),
    temperature: Number(el.temperature.value),
    seed: Number(el.seed.value),
  };
  el.runs.replaceChildren();
  el.summary.textContent = '';
  const views = specs.map((s) => new RunView(s, el.prompt.value));
  abort = new AbortController();
  el.run.disabled = true;
  el.stop.disabled = false;
  // biome-ignore lint/correctness/noUnusedVariables: read by ||= (one animation frame pending at most)
  let frame = 0;
  const redraw = () => {
    frame ||= requestAnimationFrame(() => {
      frame = 0;
      drawAll(views);
    });
  };
  try {
    // Both generations go to the worker at once: its engine batches them, one forward pass per step.
    await Promise.all(
      views.map(async (v) => {
        const it = worker!.generate(el.prompt.value, { ...options, kv: v.spec, signal: abort!.signal });
        for (;;) {
          const r = await it.next();
          if (r.done) {
            v.result = r.value;
            break;
          }
          v.push(r.value.token, r.value.text, r.value.stats);
          redraw();
        }
      }),
    );
  } catch (e) {
    abort.abort();
    showError((e as Error).message);
  } finally {
    drawAll(views);
    el.run.disabled = false;
    el.stop.disabled = true;
    document.body.dataset.state = 'done';
  }
}

el.form.addEventListener('submit', (e) => {
  e.preventDefault();
  document.body.dataset.state = 'running';
  void run();
});
el.stop.addEventListener('click', () => abort?.abort());

/** Which kernels run: wasm with its threads, webgpu with the GPU adapter's name. */
function kernelsLabel(i: ModelInfo): string {
  if (i.backend === 'wasm') return `wasm (${i.threads} thread${i.threads > 1 ? 's' : ''})`;
  if (i.backend === 'webgpu') return `webgpu (${i.device.replace(/^webgpu: /, '')})`;
  return i.backend;
}

/** The model to load: ?model=URL, else the first one the server lists in models.json. */
async function modelUrl(): Promise<string> {
  const param = new URLSearchParams(location.search).get('model');
  if (param) return new URL(param, location.href).href;
  const res = await fetch('models.json').catch(() => null);
  if (!res?.ok) throw new Error('no model to load: open this page with ?model=<URL of a model directory>, or serve it with `kivi web --model DIR`');
  const list = (await res.json()) as { name: string; url: string }[];
  if (!list.length) throw new Error('models.json lists no model');
  return new URL(list[0]!.url, location.href).href;
}

async function start(): Promise<void> {
  const t0 = performance.now();
  try {
    const url = await modelUrl();
    el.status.textContent = `Loading ${url} …`;
    const params = new URLSearchParams(location.search);
    const backend = params.get('backend') ?? undefined;
    const threads = params.get('threads');
    worker = await KiviWorker.load(url, {
      backend: backend as BackendChoice | undefined,
      threads: threads === null ? undefined : Number(threads),
      onProgress: (done, total) => {
        el.progress.max = total;
        el.progress.value = done;
        el.status.textContent = `Loading weights: ${formatBytes(done)} of ${formatBytes(total)}`;
      },
    });
    const i = worker.info;
    el.progress.hidden = true;
    el.status.textContent =
      `${i.name}: ${i.numLayers} layers, hidden ${i.hiddenSize}, ${i.numHeads} query / ${i.numKvHeads} KV heads of ${i.headDim}, ` +
      `context ${i.maxPositions} · ${formatBytes(i.weightBytes)} of weights loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s · kernels: ${kernelsLabel(i)}`;
    drawProjection(i);
    el.run.disabled = false;
    document.body.dataset.state = 'ready';
  } catch (e) {
    el.status.textContent = 'The model did not load.';
    el.progress.hidden = true;
    showError((e as Error).message);
    document.body.dataset.state = 'error';
  }
}

void start();
