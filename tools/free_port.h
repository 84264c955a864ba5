#pragma once
// A loopback TCP port for a test or demo server to listen on.

namespace keel {

// A loopback port nobody listened on a moment ago, below the kernel's
// ephemeral range (32768-60999), so that an outgoing connection is not
// handed it before the server binds it. Never the same port twice in one
// process, nor in two processes alive at once that both pick with it
// (claimPort). Throws if none is found.
unsigned pickFreePort();

// Claims `port` for this process's lifetime against every other process
// that picks ports here (ctest -j runs several test programs at once, and
// a probe bind reserves nothing): an flock on $TMPDIR/keel-ports/<port>
// (or /tmp's), held on a descriptor kept open until the process ends, so
// a process that dies, however, gives its claims back. False if another
// live process holds the claim. True, claiming nothing, when the folder
// cannot be used (the bind probe is then the only check, as before).
bool claimPort(unsigned port);

}  // namespace keel
