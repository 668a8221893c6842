/**
 * A strict parser of the Prometheus text exposition format (0.0.4), for
 * tests of /metrics: every line must be a # HELP, # TYPE, another comment or
 * a sample; names and labels must be well formed (escapes \\ \" \n only);
 * values must be Go floats (+Inf, -Inf, NaN allowed); a family's TYPE comes
 * before its samples and at most once; every sample belongs to a declared
 * family (histograms: _bucket with le, _sum, _count); no series twice;
 * histogram buckets are cumulative, their le ascending, ending at +Inf whose
 * count equals _count. Anything else throws with the line number.
 */
import { request } from 'node:http';

export interface PromSample { name: string; labels: Record<string, string>; value: number }
export interface PromFamily { name: string; type: string; help?: string; samples: PromSample[] }

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

function parseValue(text: string, where: string): number {
  if (text === '+Inf' || text === 'Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  if (text === 'NaN') return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`${where}: bad value '${text}'`);
  return Number(text);
}

function parseLabels(text: string, where: string): { labels: Record<string, string>; rest: string } {
  const labels: Record<string, string> = {};
  let i = 1; // after '{'
  for (;;) {
    if (text[i] === '}') return { labels, rest: text.slice(i + 1) };
    const eq = text.indexOf('=', i);
    if (eq < 0) throw new Error(`${where}: label without '='`);
    const name = text.slice(i, eq);
    if (!LABEL.test(name)) throw new Error(`${where}: bad label name '${name}'`);
    if (name in labels) throw new Error(`${where}: label '${name}' twice`);
    if (text[eq + 1] !== '"') throw new Error(`${where}: label value not quoted`);
    let v = '';
    let j = eq + 2;
    for (; j < text.length && text[j] !== '"'; j++) {
      if (text[j] === '\\') {
        const c = text[++j];
        if (c === 'n') v += '\n';
        else if (c === '\\' || c === '"') v += c;
        else throw new Error(`${where}: bad escape '\\${c}'`);
      } else if (text[j] === '\n') throw new Error(`${where}: newline in label value`);
      else v += text[j];
    }
    if (j >= text.length) throw new Error(`${where}: unterminated label value`);
    labels[name] = v;
    i = j + 1;
    if (text[i] === ',') i++;
    else if (text[i] !== '}') throw new Error(`${where}: expected ',' or '}' after a label`);
  }
}

/** The family a sample name belongs to, given the declared families. */
function familyOf(name: string, families: Map<string, PromFamily>): PromFamily | undefined {
  const f = families.get(name);
  if (f) return f.type === 'histogram' || f.type === 'summary' ? undefined : f;
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (!name.endsWith(suffix)) continue;
    const base = families.get(name.slice(0, -suffix.length));
    if (base?.type === 'histogram' || (base?.type === 'summary' && suffix !== '_bucket')) return base;
  }
  return undefined;
}

export function parsePrometheusText(text: string): Map<string, PromFamily> {
  if (!text.endsWith('\n')) throw new Error('exposition does not end with a newline');
  const families = new Map<string, PromFamily>();
  const series = new Set<string>();
  const lines = text.split('\n').slice(0, -1);
  lines.forEach((line, n) => {
    const where = `line ${n + 1}`;
    if (line === '') return;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (!m) return; // another comment
      const [, kind, name, rest] = m;
      if (!NAME.test(name)) throw new Error(`${where}: bad metric name '${name}'`);
      let f = families.get(name);
      if (kind === 'TYPE') {
        if (!TYPES.has(rest)) throw new Error(`${where}: bad type '${rest}'`);
        if (f?.type && f.samples.length === 0 && f.type !== 'untyped') throw new Error(`${where}: TYPE of ${name} twice`);
        if (f && f.samples.length > 0) throw new Error(`${where}: TYPE of ${name} after its samples`);
        if (f) f.type = rest;
        else families.set(name, { name, type: rest, samples: [] });
      } else {
        if (f?.help !== undefined) throw new Error(`${where}: HELP of ${name} twice`);
        if (!f) { f = { name, type: 'untyped', samples: [] }; families.set(name, f); }
        f.help = rest;
      }
      return;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(.*)$/.exec(line);
    if (!m) throw new Error(`${where}: not a sample: '${line}'`);
    const name = m[1];
    let rest = m[2];
    let labels: Record<string, string> = {};
    if (rest.startsWith('{')) ({ labels, rest } = parseLabels(rest, where));
    const parts = rest.trim().split(' ');
    if (!rest.startsWith(' ') || parts.length < 1 || parts.length > 2) throw new Error(`${where}: expected ' value [timestamp]'`);
    const value = parseValue(parts[0], where);
    if (parts[1] !== undefined && !/^-?\d+$/.test(parts[1])) throw new Error(`${where}: bad timestamp`);
    const f = familyOf(name, families);
    if (!f) throw new Error(`${where}: sample ${name} of no declared family`);
    const key = `${name}{${Object.entries(labels).sort().map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(',')}}`;
    if (series.has(key)) throw new Error(`${where}: series ${key} twice`);
    series.add(key);
    if (f.type === 'counter' && !(value >= 0)) throw new Error(`${where}: counter ${name} is ${value}`);
    f.samples.push({ name, labels, value });
  });
  for (const f of families.values()) if (f.type === 'histogram') checkHistogram(f);
  return families;
}

function checkHistogram(f: PromFamily): void {
  const groups = new Map<string, { buckets: [number, number][]; count?: number }>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    const g = groups.get(key) ?? { buckets: [] };
    groups.set(key, g);
    if (s.name === `${f.name}_bucket`) {
      if (le === undefined) throw new Error(`${f.name}: bucket without le`);
      g.buckets.push([parseValue(le, `${f.name} le`), s.value]);
    } else if (s.name === `${f.name}_count`) g.count = s.value;
  }
  for (const [key, g] of groups) {
    const last = g.buckets[g.buckets.length - 1];
    if (!last || last[0] !== Infinity) throw new Error(`${f.name}${key}: no +Inf bucket`);
    for (let i = 1; i < g.buckets.length; i++) {
      if (!(g.buckets[i][0] > g.buckets[i - 1][0])) throw new Error(`${f.name}${key}: le not ascending`);
      if (g.buckets[i][1] < g.buckets[i - 1][1]) throw new Error(`${f.name}${key}: buckets not cumulative`);
    }
    if (g.count !== last[1]) throw new Error(`${f.name}${key}: _count ${g.count} != +Inf bucket ${last[1]}`);
  }
}

/** The value of one series (labels matched exactly), or undefined. */
export function sampleValue(families: Map<string, PromFamily>, family: string, name: string, labels: Record<string, string>): number | undefined {
  const f = families.get(family);
  const want = JSON.stringify(Object.entries(labels).sort());
  return f?.samples.find((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want)?.value;
}

/** GET a path over a Unix socket; resolves to status, content type and body. */
export function httpGetUnix(socketPath: string, path: string, method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body }));
    });
    req.on('error', reject);
    req.end();
  });
}
