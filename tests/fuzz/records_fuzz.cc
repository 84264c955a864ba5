// Records read from disk: the coordinator's WAL (interaction, rollback,
// audit, request-id rows) and the agent's branch log and ledger (branch,
// account), through common/records.h's decode*/peekInteraction, then the
// JSON and text renderings keelctl and the logs make of them.
//
// Byte 0: bits 0-2 pick the record type; bit 3 set: the rest of the input
// is taken as a whole record (envelope and all: the envelope checks);
// clear: it is the payload, sealed here in a valid envelope (length,
// checksum) so that the Cap'n Proto decoding behind the checksum is reached.
// A damaged record must end in CorruptRecord, nothing else.

#include <string>

#include "common/records.h"
#include "tests/fuzz/fuzz_util.h"

namespace keel {
namespace {

std::string sealed(RecordType type, const std::uint8_t* p, std::size_t n) {
  std::size_t len = n / 8 * 8;  // a payload is whole words
  std::string out(12 + len, '\0');
  out[0] = 'K';
  out[1] = 'L';
  out[2] = char(kFormatVersion);
  out[3] = char(type);
  auto put = [&](std::size_t at, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) out[at + i] = char((v >> (8 * i)) & 0xff);
  };
  put(4, std::uint32_t(len));
  if (len > 0) std::memcpy(&out[12], p, len);
  put(8, crc32c(std::string_view(out).substr(12)));
  return out;
}

void decode(RecordType type, std::string_view bytes) {
  switch (type) {
    case RecordType::Interaction: {
      auto r = decodeInteraction(bytes);
      (void)toJson(r);
      (void)toText(r);
      (void)peekInteraction(bytes);
      break;
    }
    case RecordType::Rollback: {
      auto r = decodeRollback(bytes);
      (void)toJson(r);
      (void)toText(r);
      break;
    }
    case RecordType::Branch: {
      auto r = decodeBranch(bytes);
      (void)r.xid.str();
      (void)branchStatusName(r.state);
      break;
    }
    case RecordType::Account:
      (void)decodeAccount(bytes);
      break;
    case RecordType::Audit:
      (void)toJson(decodeAudit(bytes));
      break;
    case RecordType::Request:
      (void)decodeRequest(bytes);
      break;
  }
}

}  // namespace
}  // namespace keel

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keel;
  if (size < 1) return 0;
  auto type = RecordType((data[0] & 7) % 6 + 1);
  bool whole = (data[0] & 8) != 0;
  std::string bytes = whole ? std::string(reinterpret_cast<const char*>(data + 1), size - 1)
                            : sealed(type, data + 1, size - 1);
  try {
    decode(type, bytes);
  } catch (const CorruptRecord&) {
    // damaged: refused
  }
  return 0;
}
