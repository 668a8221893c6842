/**
 * Statistics and write thresholds (qapi/block-core.json): query-blockstats,
 * block-set-write-threshold with its BLOCK_WRITE_THRESHOLD event, and
 * query-block; also the BLOCK_IMAGE_CORRUPTED event's schema (drivers emit
 * it through their context).
 *
 * qsd 7.2 has no named BlockBackends (exports' are anonymous), so
 * query-blockstats without query-nodes and query-block answer [] there and
 * here. With query-nodes, qsd fills only what a node itself knows
 * (wr_highest_offset, the file driver's discard counters): its operation
 * and byte counters stay 0 for NBD traffic. blockd counts every request
 * that reaches a node, so an exported node's counters are its clients' I/O
 * in QEMU's accounting (write-zeroes as writes, discards as unmaps), with
 * total times, idle time, failed and invalid requests (account_failed and
 * account_invalid on) and latency histograms at fixed power-of-two
 * boundaries (1 µs .. 16.8 s; qsd shows them only after
 * block-latency-histogram-set, a command it lacks). Merges stay 0 (blockd
 * merges nothing) and timed_stats [] (intervals belong to guest devices).
 */
import type { BlockNode } from '../../blockdev/node.ts';
import { LatencyHistogram, nowNs } from '../../util/stats/latency-histogram.ts';
import { setWriteThreshold } from '../../blockdev/write-threshold.ts';
import { arr, enm, obj, opt, ref, req, type ObjectType } from '../../qapi/types.ts';
import { genericError } from '../errors.ts';
import type { CommandDef, EventDef } from '../command.ts';
import { BlockDeviceInfo } from './block.ts';
import { QSD_BLOCKDEV_DRIVERS } from '../../qapi/block-drivers.ts';

const BlockDeviceTimedStats = obj('BlockDeviceTimedStats', [
  req('interval_length', 'int'), req('min_rd_latency_ns', 'int'), req('max_rd_latency_ns', 'int'), req('avg_rd_latency_ns', 'int'),
  req('min_wr_latency_ns', 'int'), req('max_wr_latency_ns', 'int'), req('avg_wr_latency_ns', 'int'),
  req('min_flush_latency_ns', 'int'), req('max_flush_latency_ns', 'int'), req('avg_flush_latency_ns', 'int'),
  req('avg_rd_queue_depth', 'number'), req('avg_wr_queue_depth', 'number'),
], { doc: 'Statistics of a device during a time interval.' });

const BlockLatencyHistogramInfo = obj('BlockLatencyHistogramInfo', [req('boundaries', arr('uint64')), req('bins', arr('uint64'))]);

const COUNTERS = ['rd_bytes', 'wr_bytes', 'unmap_bytes', 'rd_operations', 'wr_operations', 'flush_operations', 'unmap_operations',
  'rd_total_time_ns', 'wr_total_time_ns', 'flush_total_time_ns', 'unmap_total_time_ns', 'wr_highest_offset', 'rd_merged', 'wr_merged',
  'unmap_merged'] as const;
const FAILED_INVALID = ['failed_rd_operations', 'failed_wr_operations', 'failed_flush_operations', 'failed_unmap_operations',
  'invalid_rd_operations', 'invalid_wr_operations', 'invalid_flush_operations', 'invalid_unmap_operations'] as const;

const BlockDeviceStats = obj('BlockDeviceStats', [
  ...COUNTERS.map((n) => req(n, 'int')),
  opt('idle_time_ns', 'int'),
  ...FAILED_INVALID.map((n) => req(n, 'int')),
  req('account_invalid', 'bool'), req('account_failed', 'bool'),
  req('timed_stats', arr(BlockDeviceTimedStats)),
  ...['rd', 'wr', 'flush'].map((k) => opt(`${k}_latency_histogram`, BlockLatencyHistogramInfo)),
], { doc: 'Statistics of a virtual block device or a block backing device.' });

const BlockStatsSpecificFile = obj('BlockStatsSpecificFile', [
  req('discard-nb-ok', 'int'), req('discard-nb-failed', 'int'), req('discard-bytes-ok', 'int'),
]);
const BlockStatsSpecific = obj('BlockStatsSpecific', [
  req('driver', enm('BlockdevDriver', [...QSD_BLOCKDEV_DRIVERS]), 'block driver name'),
], { union: { discriminator: 'driver', variants: { file: BlockStatsSpecificFile, host_device: BlockStatsSpecificFile } } });

const BlockStats: ObjectType = obj('BlockStats', [
  opt('device', 'str'), opt('qdev', 'str'), opt('node-name', 'str'),
  req('stats', BlockDeviceStats),
  opt('driver-specific', BlockStatsSpecific),
  opt('parent', ref('BlockStats', () => BlockStats)), opt('backing', ref('BlockStats', () => BlockStats)),
], { doc: 'Statistics of a virtual block device or a block backing device.' });

const BlockInfo = obj('BlockInfo', [
  req('device', 'str'), opt('qdev', 'str'), req('type', 'str'), req('removable', 'bool'), req('locked', 'bool'),
  opt('inserted', BlockDeviceInfo), opt('tray_open', 'bool'),
  opt('io-status', enm('BlockDeviceIoStatus', ['ok', 'failed', 'nospace'])),
], { doc: 'Block device information. This structure describes a virtual device and the backing device associated with it.' });

/** QEMU's BlockLatencyHistogramInfo of a node's histogram: boundaries in ns, one more bin than boundaries. */
function histogramInfo(h: LatencyHistogram): Record<string, unknown> {
  return { boundaries: LatencyHistogram.boundariesNs(), bins: Array.from(h.counts) };
}

function deviceStats(node: BlockNode): Record<string, unknown> {
  const s = node.stats;
  const out: Record<string, unknown> = {};
  for (const n of COUNTERS) out[n] = 0;
  Object.assign(out, {
    rd_bytes: s.rdBytes, wr_bytes: s.wrBytes + s.zeroBytes, unmap_bytes: s.discardBytes,
    rd_operations: s.rdOps, wr_operations: s.wrOps + s.zeroOps, flush_operations: s.flushOps, unmap_operations: s.discardOps,
    rd_total_time_ns: Math.round(s.rdLatency.sumNs), wr_total_time_ns: Math.round(s.wrLatency.sumNs),
    flush_total_time_ns: Math.round(s.flushLatency.sumNs), unmap_total_time_ns: Math.round(s.unmapLatency.sumNs),
    wr_highest_offset: s.wrHighestOffset,
  });
  // As QEMU's bdrv_query_blk_stats: idle time only once something was accessed.
  if (s.lastAccessNs > 0) out.idle_time_ns = Math.max(0, Math.round(nowNs() - s.lastAccessNs));
  Object.assign(out, {
    failed_rd_operations: s.failedRd, failed_wr_operations: s.failedWr, failed_flush_operations: s.failedFlush, failed_unmap_operations: s.failedUnmap,
    invalid_rd_operations: s.invalidRd, invalid_wr_operations: s.invalidWr, invalid_flush_operations: s.invalidFlush, invalid_unmap_operations: s.invalidUnmap,
    // Failed and invalid requests are counted in the times and the idle time (QEMU's defaults for a drive).
    account_invalid: true, account_failed: true,
    // Intervals are set on guest devices (stats-intervals), which neither qsd nor blockd has.
    timed_stats: [],
    rd_latency_histogram: histogramInfo(s.rdLatency),
    wr_latency_histogram: histogramInfo(s.wrLatency),
    flush_latency_histogram: histogramInfo(s.flushLatency),
  });
  return out;
}

/** The child that holds a node's data (QEMU: the primary child if it stores data, else the only data child). */
function dataChild(node: BlockNode): BlockNode | undefined {
  const data = node.children.filter((e) => e.role === 'file' || e.role === 'data-file' || (node.isFilter && e.role === 'backing'));
  const primary = node.primaryChild;
  if (primary && data.some((e) => e.child === primary)) return primary;
  return data.length === 1 ? data[0].child : undefined;
}

/** QEMU's bdrv_query_bds_stats at node level (no backing, implicit filters kept). */
function nodeStats(node: BlockNode): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (node.nodeName) out['node-name'] = node.nodeName;
  out.stats = deviceStats(node);
  const specific = node.ops.blockStats?.();
  if (specific) out['driver-specific'] = { driver: node.driver.name, ...specific };
  const parent = dataChild(node);
  if (parent) out.parent = nodeStats(parent);
  return out;
}

export const statsEvents: EventDef[] = [
  {
    name: 'BLOCK_WRITE_THRESHOLD',
    data: obj('q_obj_BLOCK_WRITE_THRESHOLD-arg', [
      req('node-name', 'str', 'graph node name on which the threshold was exceeded.'),
      req('amount-exceeded', 'uint64', 'amount of data which exceeded the threshold, in bytes.'),
      req('write-threshold', 'uint64', 'last configured threshold, in bytes.'),
    ]),
    doc: 'Emitted when writes on block device reaches or exceeds the configured write threshold. For thin-provisioned devices, this means the device should be extended to avoid pausing for disk exhaustion. The event is one shot. Once triggered, it needs to be re-registered with another block-set-write-threshold command.',
  },
  {
    name: 'BLOCK_IMAGE_CORRUPTED',
    data: obj('q_obj_BLOCK_IMAGE_CORRUPTED-arg', [
      req('device', 'str', 'device name. This is always present for compatibility reasons, but it can be empty ("") if the image does not have a device name associated.'),
      opt('node-name', 'str', 'node name (Since: 2.4)'),
      req('msg', 'str', 'informative message for human consumption, such as the kind of corruption being detected.'),
      opt('offset', 'int', 'if the corruption resulted from an image access, this is the host\'s access offset into the image'),
      opt('size', 'int', 'if the corruption resulted from an image access, this is the access size'),
      req('fatal', 'bool', 'if set, the image is marked corrupt and therefore unusable after this event and must be repaired (Since 2.2; before, every BLOCK_IMAGE_CORRUPTED event was fatal)'),
    ]),
    doc: 'Emitted when a disk image is being marked corrupt. The image can be identified by its device or node name.',
  },
];

export const statsCommands: CommandDef[] = [
  {
    name: 'query-blockstats',
    args: obj('q_obj_query-blockstats-arg', [
      opt('query-nodes', 'bool', 'If true, the command will query all the block nodes that have a node name, in a list which will include "parent" information, but not "backing". If false or omitted, the behavior is as before - query all the device backends, recursively including their "parent" and "backing". (Since 2.3)'),
    ]),
    returns: arr(BlockStats),
    doc: 'Query the BlockStats for all virtual block devices.',
    handler: (a: { 'query-nodes'?: boolean }, ctx) => (a['query-nodes'] ? [...ctx.graph.nodes.values()].map(nodeStats) : []),
  },
  {
    name: 'block-set-write-threshold',
    args: obj('q_obj_block-set-write-threshold-arg', [
      req('node-name', 'str', 'graph node name on which the threshold must be set.'),
      req('write-threshold', 'uint64', 'configured threshold for the block device, bytes. Use 0 to disable the threshold.'),
    ]),
    doc: 'Change the write threshold for a block drive. An event will be delivered if a write to this block drive crosses the configured threshold. The threshold is an offset, thus must be non-negative. Default is no write threshold. Setting the threshold to zero disables it.',
    handler(a: { 'node-name': string; 'write-threshold': number }, ctx) {
      const node = ctx.graph.nodes.get(a['node-name']);
      if (!node) throw genericError(`Device '${a['node-name']}' not found`);
      setWriteThreshold(node, a['write-threshold'], (n, amount, threshold) => ctx.host.events.emit('BLOCK_WRITE_THRESHOLD', {
        'node-name': n.nodeName, 'amount-exceeded': amount, 'write-threshold': threshold,
      }));
      return {};
    },
  },
  {
    name: 'query-block',
    returns: arr(BlockInfo),
    doc: 'Get a list of BlockInfo for all virtual block devices. blockd, like qemu-storage-daemon, has no named block backends: the list is empty (query-named-block-nodes lists the nodes).',
    handler: () => [],
  },
];
