/** What an image creator (one per driver that supports blockdev-create) looks like. */
import type { ObjectType } from '../../qapi/types.ts';
import type { BlockGraph } from '../graph.ts';

export interface CreateContext {
  /** The graph, for creators that write through nodes (qcow2 formats onto its 'file' node). */
  readonly graph: BlockGraph;
  /** Aborted when the create job is cancelled with force. */
  readonly signal: AbortSignal;
}

export interface ImageCreator {
  /** The blockdev driver it creates images for (the BlockdevCreateOptions discriminator value). */
  readonly driver: string;
  /** The driver's members of BlockdevCreateOptions (QEMU's BlockdevCreateOptions<Driver>). */
  readonly options: ObjectType;
  /** Creates the image; throws with QEMU's message on failure (the job's error). */
  create(options: Record<string, unknown>, ctx: CreateContext): Promise<void>;
}
