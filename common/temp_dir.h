#pragma once
// TempDir: a fresh directory under /tmp (mkdtemp), removed with its contents
// when the object goes. For unit tests and micro benchmarks (/tmp is the
// same filesystem as the data directories on the machines we measure).

#include <stdlib.h>

#include <filesystem>
#include <stdexcept>
#include <string>

namespace keel {

class TempDir {
 public:
  // The directory is /tmp/<prefix>-XXXXXX.
  explicit TempDir(const std::string& prefix = "keel") {
    std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + tmpl);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string sub(const std::string& name) const { return path_ + "/" + name; }
  // sub(name), created (with parents): an LMDB environment needs its
  // directory to exist (lmdb::Env does not create it).
  std::string mkdir(const std::string& name) const {
    std::filesystem::create_directories(sub(name));
    return sub(name);
  }

 private:
  std::string path_;
};

}  // namespace keel
