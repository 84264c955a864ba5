#include "common/admin_plane.h"

#include <atomic>
#include <chrono>
#include <thread>

namespace keel {

std::uint32_t limitParam(const HttpRequest& r, std::uint32_t dflt, std::uint32_t max) {
  auto v = r.param("limit");
  if (!v) return dflt;
  std::string range = "a whole number from 1 to " + std::to_string(max);
  if (v->empty() || v->size() > 9) throw BadParam{"limit '" + *v + "' is not " + range};
  std::uint64_t n = 0;
  for (char c : *v) {
    if (c < '0' || c > '9') throw BadParam{"limit '" + *v + "' is not " + range};
    n = n * 10 + std::uint64_t(c - '0');
  }
  if (n == 0 || n > max) throw BadParam{"limit " + *v + " is out of range: " + range};
  return std::uint32_t(n);
}

void stopAdminServer(AdminHttpServer& server, kj::WaitScope& ws) {
  std::atomic<bool> done{false};
  std::thread stopper([&]() {
    server.stop();
    done = true;
  });
  // Cross-thread calls are events of this loop: poll() runs them.
  while (!done) {
    ws.poll();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  stopper.join();
}

}  // namespace keel
