#pragma once
// keel-bench --scrape-metrics: a Prometheus-like scraper that GETs /metrics
// from every admin plane of the deployment (the coordinator and each agent)
// once per interval while the load runs, and times each answer (connect to
// the last byte). With `consolePort` set it also makes, each interval, the
// calls an open console page makes of the coordinator's plane (/api/live,
// /api/participants, /api/list?limit=200; /api/audit every fifth). Its own
// thread; blocking sockets with a 5 s timeout; each round reads every
// target one after the other, as a scraper would.

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

namespace keel::bench {

struct ScrapeResult {
  std::uint64_t scrapes = 0;  // answered 200 with a non-empty body
  std::uint64_t failures = 0;
  std::string firstFailure;
  std::uint64_t bytes = 0;     // of the last answer of each target, summed
  std::vector<double> ms;      // each scrape's time
  double percentile(double p) const;
};

class MetricsScraper {
 public:
  MetricsScraper(std::vector<unsigned> ports, double intervalS, unsigned consolePort = 0);
  // The console's calls (consolePort), timed apart from the scrapes.
  ScrapeResult console() const { return console_; }
  ~MetricsScraper();
  void start();
  ScrapeResult stop();

 private:
  void loop();
  std::vector<unsigned> ports_;
  double intervalS_;
  unsigned consolePort_;
  std::uint64_t rounds_ = 0;
  ScrapeResult console_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  ScrapeResult result_;  // the scraper thread's until stop() joins it
};

// One GET of `path` on 127.0.0.1:port: (status, body), status 0 when no
// answer came.
std::pair<int, std::string> httpGet(unsigned port, const std::string& path);

}  // namespace keel::bench
