#pragma once
// A loopback TCP port for a test or demo server to listen on.

namespace keel {

// A loopback port nobody listened on a moment ago, below the kernel's
// ephemeral range (32768-60999), so that an outgoing connection is not
// handed it before the server binds it. Never the same port twice in one
// process. Throws if none is found.
unsigned pickFreePort();

}  // namespace keel
