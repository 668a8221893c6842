/**
 * The layers of blockd as import rules (../README.md "Layout"). Imports only
 * point down:
 *
 *   daemon → qmp → nbd, fuse (the servers) → export → blockdev
 *          → objects → qapi, nbd-protocol → util, platform
 *   crypto (LUKS headers, PBKDF2, sector ciphers) sits beside util: it
 *   imports util and platform only, and blockdev's drivers use it.
 *
 * `npm run lint:layers` (part of `npm test` via test/unit/layers.test.ts)
 * fails on any violation.
 */
const layer = (name) => `^src/${name}/`;
const below = (...names) => `^src/(${names.join('|')})/`;

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'No import cycles at run time, within a layer or across layers (a type-only import back is fine: it is erased).',
      from: { path: '^src/' },
      to: { circular: true, viaOnly: { dependencyTypesNot: ['type-only'] } },
    },
    {
      name: 'nothing-imports-daemon',
      severity: 'error',
      comment: 'src/daemon is the composition root: nothing imports it.',
      from: { path: '^src/', pathNot: layer('daemon') },
      to: { path: layer('daemon') },
    },
    {
      name: 'qmp-is-a-client-of-the-layers-below',
      severity: 'error',
      from: { path: layer('qmp') },
      to: { path: '^src/', pathNot: [layer('qmp'), below('nbd', 'fuse', 'export', 'blockdev', 'objects', 'qapi', 'nbd-protocol', 'crypto', 'util', 'platform')] },
    },
    {
      name: 'iothreads-serve-below-the-control-plane',
      severity: 'error',
      comment: 'src/iothread runs exports in worker threads: it uses the NBD server, exports and the block layer; only the daemon uses it (QMP reaches it through QmpHost.commandGate).',
      from: { path: layer('iothread') },
      to: { path: '^src/', pathNot: [layer('iothread'), below('nbd', 'export', 'blockdev', 'objects', 'qapi', 'nbd-protocol', 'crypto', 'util', 'platform')] },
    },
    {
      name: 'only-the-daemon-knows-iothreads',
      severity: 'error',
      from: { path: '^src/', pathNot: [layer('daemon'), layer('iothread')] },
      to: { path: layer('iothread') },
    },
    {
      name: 'servers-know-no-control-plane',
      severity: 'error',
      comment: 'The NBD server (and the FUSE export) never call QMP or the daemon.',
      from: { path: below('nbd', 'fuse') },
      to: { path: below('qmp', 'daemon') },
    },
    {
      name: 'servers-are-separate',
      severity: 'error',
      from: { path: layer('nbd') },
      to: { path: layer('fuse') },
    },
    {
      name: 'fuse-is-not-nbd',
      severity: 'error',
      comment: 'The FUSE export knows no NBD server or NBD codec.',
      from: { path: layer('fuse') },
      to: { path: below('nbd', 'nbd-protocol') },
    },
    {
      name: 'fuse-codecs-are-pure',
      severity: 'error',
      comment: 'The FUSE protocol codecs (src/fuse/protocol) know no device, no block layer: util only.',
      from: { path: '^src/fuse/protocol/' },
      to: { path: '^src/', pathNot: ['^src/fuse/protocol/', layer('util')] },
    },
    {
      name: 'export-layer-knows-no-server',
      severity: 'error',
      comment: 'The generic export layer knows its export types only through its table.',
      from: { path: layer('export') },
      to: { path: below('qmp', 'daemon', 'nbd', 'fuse') },
    },
    {
      name: 'blockdev-knows-no-export-server-or-control-plane',
      severity: 'error',
      from: { path: layer('blockdev') },
      to: { path: below('qmp', 'daemon', 'nbd', 'fuse', 'export') },
    },
    {
      name: 'drivers-know-no-jobs',
      severity: 'error',
      comment: 'Drivers and filters know no job; jobs use drivers, not the other way round.',
      from: { path: '^src/blockdev/(drivers|filters)/' },
      to: { path: '^src/blockdev/jobs/' },
    },
    {
      name: 'only-the-nbd-driver-speaks-nbd',
      severity: 'error',
      comment: 'Of the block layer, only the nbd client driver uses the NBD protocol codecs.',
      from: { path: layer('blockdev'), pathNot: '^src/blockdev/drivers/nbd/' },
      to: { path: layer('nbd-protocol') },
    },
    {
      name: 'objects-below-blockdev',
      severity: 'error',
      from: { path: layer('objects') },
      to: { path: '^src/', pathNot: [layer('objects'), below('qapi', 'util', 'platform')] },
    },
    {
      name: 'schema-at-the-bottom',
      severity: 'error',
      comment: 'The schema layer imports nothing of the project but util and platform.',
      from: { path: layer('qapi') },
      to: { path: '^src/', pathNot: [layer('qapi'), below('util', 'platform')] },
    },
    {
      name: 'nbd-codecs-are-pure',
      severity: 'error',
      comment: 'The NBD protocol codecs know no socket, no block layer: util only.',
      from: { path: layer('nbd-protocol') },
      to: { path: '^src/', pathNot: [layer('nbd-protocol'), layer('util')] },
    },
    {
      name: 'crypto-beside-util',
      severity: 'error',
      comment: 'The pure crypto modules (LUKS, PBKDF2, sector ciphers) know no block layer: util and platform only.',
      from: { path: layer('crypto') },
      to: { path: '^src/', pathNot: [layer('crypto'), below('util', 'platform')] },
    },
    {
      name: 'util-and-platform-are-leaves',
      severity: 'error',
      from: { path: below('util', 'platform') },
      to: { path: '^src/', pathNot: below('util', 'platform') },
    },
    {
      name: 'util-is-pure',
      severity: 'error',
      from: { path: layer('util') },
      to: { path: layer('platform') },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { extensions: ['.ts', '.js'] },
  },
};
