#pragma once
// Shared by the libFuzzer targets (docs/fuzzing.md).
//
// A network message is read the way the RPC system reads one: the bytes as
// a flat Cap'n Proto message in word-aligned memory (a copy: libFuzzer's
// buffer has no alignment promise), under networkReaderOptions(). A
// kj::Exception while reading is the expected answer to a malformed
// message; a crash, undefined behaviour, a leak or any other exception is a
// bug. Which struct the message's root is read as (which call's params or
// results) comes from the first byte of the input, so one target covers
// every message of one direction.

#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/wire.h"

namespace keel::fuzz {

// The input after its first `skip` bytes, as a message; `fn(reader)` runs on
// it. Trailing bytes that do not fill a word are dropped.
template <typename Fn>
void withMessage(const std::uint8_t* data, std::size_t size, std::size_t skip, Fn&& fn) {
  if (size < skip) return;
  std::size_t words = (size - skip) / sizeof(capnp::word);
  auto buf = kj::heapArray<capnp::word>(words);
  if (words > 0) std::memcpy(buf.begin(), data + skip, words * sizeof(capnp::word));
  try {
    capnp::FlatArrayMessageReader reader(buf, networkReaderOptions());
    fn(reader);
  } catch (const kj::Exception&) {
    // malformed message: refused, as the RPC system refuses it
  }
}

// A property of Keel's own that must hold whatever the input: a bug if not.
[[noreturn]] inline void violated(const char* what) {
  std::fprintf(stderr, "fuzz: property violated: %s\n", what);
  std::abort();
}

}  // namespace keel::fuzz
