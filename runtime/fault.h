// fault.h — fault injection for the crash tests of checkpoint writing (tests/cli/checkpoint_kills.sh).
//
// Every step of a save that changes what is on disk (each write() of a file, fsync, rename, mkdir, unlink) calls
// fault_point(). With AQ_FAULT_KILL_AT=K in the environment the process kills itself with SIGKILL at the K-th
// such point, exactly as `kill -9` at that instant would (no destructors, no buffered output); with
// AQ_FAULT_KILL_AT=count it prints "aq fault points: N" to stderr when it exits, so a test knows how many
// points a run passes.
// Without the variable fault_point() is one comparison.
#pragma once

namespace aq {

void fault_point();

}  // namespace aq
