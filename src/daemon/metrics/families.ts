/**
 * Metric families read at scrape time (collect-on-scrape): each is a
 * prom-client metric whose samples a function computes from the daemon's
 * plain counters when /metrics is requested. The data path only ever bumps
 * those counters; nothing here runs per request.
 */
import type { Registry } from 'prom-client';
import { BOUNDED_BUCKETS, LatencyHistogram } from '../../util/stats/latency-histogram.ts';

export type Labels = Record<string, string>;
export interface Sample { labels: Labels; value: number }
export interface HistogramSample { labels: Labels; histogram: LatencyHistogram }

interface PromValue { metricName?: string; labels: Labels; value: number }
/** The exposition type (prom-client's registry writes it into # TYPE as given). */
type FamilyType = 'counter' | 'gauge' | 'histogram';
interface PromMetric {
  name: string; help: string; type: FamilyType; aggregator: 'sum';
  get(): Promise<{ name: string; help: string; type: FamilyType; aggregator: 'sum'; values: PromValue[] }>;
  reset(): void;
}

/** Bucket upper bounds in seconds, as `le` label values (2^i µs: exact decimals). */
const LE = Array.from({ length: BOUNDED_BUCKETS }, (_, i) => String(2 ** i / 1e6));

function family(registry: Registry, name: string, help: string, type: FamilyType, values: () => PromValue[]): void {
  const m: PromMetric = {
    name, help, type, aggregator: 'sum',
    get: async () => ({ name, help, type, aggregator: 'sum', values: values() }),
    reset: () => undefined,
  };
  // prom-client's registry takes any object with its metric interface (name, type, get()).
  registry.registerMetric(m as unknown as Parameters<Registry['registerMetric']>[0]);
}

/** A counter (name ends in _total) or gauge whose samples `read` computes at each scrape. */
export function collected(registry: Registry, type: 'counter' | 'gauge', name: string, help: string, read: () => Sample[]): void {
  family(registry, name, help, type, () => read().map((s) => ({ labels: s.labels, value: s.value })));
}

/** A histogram in seconds from LatencyHistograms (cumulative buckets, _sum, _count), read at each scrape. */
export function collectedHistogram(registry: Registry, name: string, help: string, read: () => HistogramSample[]): void {
  family(registry, name, help, 'histogram', () => {
    const out: PromValue[] = [];
    for (const { labels, histogram } of read()) {
      let cumulative = 0;
      for (let i = 0; i < BOUNDED_BUCKETS; i++) {
        cumulative += histogram.counts[i];
        out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: LE[i] }, value: cumulative });
      }
      cumulative += histogram.counts[BOUNDED_BUCKETS];
      out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: '+Inf' }, value: cumulative });
      out.push({ metricName: `${name}_sum`, labels, value: histogram.sumNs / 1e9 });
      out.push({ metricName: `${name}_count`, labels, value: cumulative });
    }
    return out;
  });
}
