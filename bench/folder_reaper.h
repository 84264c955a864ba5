#pragma once
// FolderReaper: what keel-bench leaves behind when it does not reach its
// own tear-down.
//
// keel-bench runs its deployment (coordinator, agents, PostgreSQL or etcd
// servers) out of a temporary folder it removes at the end (kept with
// --keep or after a failed run, for the logs). Its processes die with it
// (PR_SET_PDEATHSIG), but a folder of a run that was interrupted used to
// stay behind, with databases of any size in it.
//
// The reaper is a child forked first thing in main, while keel-bench is
// still one thread. keel-bench tells it over a socket pair which folders it owns
// ("open"), which it has torn down itself ("close"), and, from its SIGINT /
// SIGTERM / SIGHUP handler, that it was interrupted. The reaper ignores
// those signals and waits for the connection's end, which comes however
// keel-bench ends. Then, for every folder still open:
//   - interrupted (Ctrl-C, kill): removed, unless --keep said keep it; a
//     line on stderr says which;
//   - ended any other way (SIGKILL, a crash): kept, for its logs, and a
//     line says where.
// Removal waits up to 5 s for the deployment's processes to finish
// writing into the folder (they are ending at the same moment).
//
// One per process; every call is from the main thread, except the signal
// handler's send(2).

#include <string>

namespace keel::bench {

// Forks the reaper and installs the signal handlers. Call before any thread
// is started. Failing to start it is not fatal: keel-bench runs without it
// (one line on stderr).
void startFolderReaper();

// `dir` is keel-bench's from now on; `keep`: --keep (kept even when
// interrupted).
void reaperOpen(const std::string& dir, bool keep);

// keel-bench tore `dir` down itself (removed it, or kept it on purpose).
void reaperClose(const std::string& dir);

}  // namespace keel::bench
