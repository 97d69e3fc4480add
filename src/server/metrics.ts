/**
 * Prometheus text exposition (format 0.0.4) for a handful of counters, gauges and histograms. Gauges are
 * read when scraped, so they are never stale; counters and histograms are updated by the routes.
 */

type Labels = Record<string, string>;

export interface Sample {
  labels?: Labels;
  value: number;
}

interface Family {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  samples: () => { suffix: string; labels?: Labels; value: number }[];
}

export class Counter {
  private readonly values = new Map<string, { labels: Labels; value: number }>();
  inc(labels: Labels = {}, by = 1): void {
    const key = JSON.stringify(labels);
    const cur = this.values.get(key);
    if (cur) cur.value += by;
    else this.values.set(key, { labels, value: by });
  }
  get(labels: Labels = {}): number {
    return this.values.get(JSON.stringify(labels))?.value ?? 0;
  }
  samples(): Sample[] {
    return [...this.values.values()].map((v) => ({ labels: v.labels, value: v.value }));
  }
}

/** Cumulative buckets with upper bounds `bounds` (seconds), plus +Inf. */
export class Histogram {
  private readonly counts: number[];
  sum = 0;
  count = 0;
  constructor(readonly bounds: number[]) {
    this.counts = new Array<number>(bounds.length).fill(0);
  }
  observe(v: number): void {
    for (let i = 0; i < this.bounds.length; i++) if (v <= this.bounds[i]!) this.counts[i]!++;
    this.sum += v;
    this.count++;
  }
  buckets(): { le: number; count: number }[] {
    return this.bounds.map((le, i) => ({ le, count: this.counts[i]! }));
  }
}

function labelText(labels?: Labels): string {
  if (!labels || Object.keys(labels).length === 0) return '';
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')}"`);
  return `{${parts.join(',')}}`;
}

function num(v: number): string {
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  if (Number.isNaN(v)) return 'NaN';
  return String(v);
}

export class Registry {
  private readonly families: Family[] = [];

  gauge(name: string, help: string, read: () => number | Sample[]): void {
    this.simple(name, help, 'gauge', read);
  }

  counter(name: string, help: string, read: () => number | Sample[]): void {
    this.simple(name, help, 'counter', read);
  }

  private simple(name: string, help: string, type: 'gauge' | 'counter', read: () => number | Sample[]): void {
    this.families.push({
      name,
      help,
      type,
      samples: () => {
        const v = read();
        return typeof v === 'number' ? [{ suffix: '', value: v }] : v.map((s) => ({ suffix: '', ...s }));
      },
    });
  }

  histogram(name: string, help: string, h: Histogram): void {
    this.families.push({
      name,
      help,
      type: 'histogram',
      samples: () => [
        ...h.buckets().map((b) => ({ suffix: '_bucket', labels: { le: num(b.le) }, value: b.count })),
        { suffix: '_bucket', labels: { le: '+Inf' }, value: h.count },
        { suffix: '_sum', value: h.sum },
        { suffix: '_count', value: h.count },
      ],
    });
  }

  render(): string {
    let out = '';
    for (const f of this.families) {
      out += `# HELP ${f.name} ${f.help}\n# TYPE ${f.name} ${f.type}\n`;
      for (const s of f.samples()) out += `${f.name}${s.suffix}${labelText(s.labels)} ${num(s.value)}\n`;
    }
    return out;
  }
}

/** Parse Prometheus text into `name{labels}` → value (tests and the capacity study read /metrics with it). */
export function parseMetrics(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    const v = line.slice(i + 1);
    m.set(line.slice(0, i), v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : Number(v));
  }
  return m;
}
