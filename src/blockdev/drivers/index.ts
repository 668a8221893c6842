/** Every driver blockd has, registered into a graph at start-up. */
import type { BlockGraph } from '../graph.ts';
import { nullAioDriver, nullDriver } from './null.ts';
import { rawDriver } from './raw.ts';
import { fileDriver, hostCdromDriver, hostDeviceDriver } from './file/index.ts';
import { qcow2Driver } from './qcow2/index.ts';
import { luksDriver } from './luks/index.ts';
import { nbdDriver } from './nbd/index.ts';
import { vdiDriver } from './vdi/index.ts';
import { vpcDriver } from './vpc/index.ts';
import { qcowDriver } from './qcow/index.ts';
import { dmgDriver } from './dmg/index.ts';
import { qedDriver } from './qed/index.ts';
import { vhdxDriver } from './vhdx/index.ts';
import { quorumDriver } from './quorum/index.ts';
import { parallelsDriver } from './parallels/index.ts';
import { vmdkDriver } from './vmdk/index.ts';
import { httpDriver, httpsDriver } from './http/index.ts';
import { rbdDriver } from './rbd/index.ts';
import { copyOnReadDriver } from '../filters/copy-on-read.ts';
import { copyBeforeWriteDriver } from '../filters/copy-before-write.ts';
import { throttleDriver } from '../filters/throttle.ts';
import { blkdebugDriver } from '../filters/blkdebug/index.ts';
import { compressDriver } from '../filters/compress.ts';
import { snapshotAccessDriver } from '../filters/snapshot-access.ts';
import { preallocateDriver } from '../filters/preallocate.ts';
import { blklogwritesDriver } from '../filters/blklogwrites/index.ts';

export function registerDrivers(graph: BlockGraph): void {
  for (const d of [fileDriver, hostDeviceDriver, nullDriver, nullAioDriver, rawDriver, qcow2Driver, luksDriver, nbdDriver, httpDriver, httpsDriver, rbdDriver, copyBeforeWriteDriver]) graph.register(d);
  graph.register(copyOnReadDriver);
  graph.register(throttleDriver);
  graph.register(blkdebugDriver);
  graph.register(compressDriver);
  graph.register(snapshotAccessDriver);
  graph.register(preallocateDriver);
  graph.register(blklogwritesDriver);
  graph.register(vdiDriver);
  graph.register(vpcDriver);
  graph.register(qcowDriver);
  graph.register(dmgDriver);
  graph.register(hostCdromDriver);
  graph.register(qedDriver);
  graph.register(vhdxDriver);
  graph.register(quorumDriver);
  graph.register(parallelsDriver);
  graph.register(vmdkDriver);
}
