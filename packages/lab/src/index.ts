export {
  connectionString,
  DCS_DEFAULTS,
  etcdArgs,
  patroniConfig,
  REDIS_CLUSTER_DEFAULTS,
  redisArgs,
  redisClusterArgs,
  SENTINEL_MASTER_NAME,
  scopeFor,
  sentinelConf,
} from './config.js'
export {
  type ClusterInfo,
  type ClusterMember,
  type FrozenMember,
  Lab,
  type LabMember,
  type LabMemberStatus,
  type LabStatus,
  logShowsDivergence,
  parsePsqlOutput,
  type RedisAddress,
  type SentinelInfo,
  type StartMemberOptions,
  type StartMemberResult,
} from './lab.js'
export {
  ensurePackages,
  missingPackages,
  missingPackagesError,
  type Requirement,
  requirements,
} from './packages.js'
export { canListen, kernelPort, PortAllocator } from './ports.js'
export {
  type ClusterNodesEntry,
  parseClusterNodes,
  type RedisClusterFailover,
  type RedisClusterInfo,
  type RedisClusterNode,
  slotRanges,
} from './redis-cluster.js'
export { parseReply, RespError, type RespValue, redisCommand } from './resp.js'
export { type LabOptions, startLab } from './start.js'
export {
  type LabState,
  parseState,
  readState,
  STATE_FILE,
  serializeState,
  statePath,
  writeState,
} from './state.js'
export { isProcessAlive, waitFor } from './util.js'
