// pickFreePort across processes: ctest -j runs several test programs at
// once, each picking ports for the servers it starts; a port one of them
// picked (and may not have bound yet) must not be handed to another.

#include "tools/free_port.h"

#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace keel {
namespace {

// Runs `child` in a forked process and returns its exit status.
template <typename Fn>
int inChild(Fn child) {
  pid_t pid = ::fork();
  if (pid == 0) ::_exit(child());
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(FreePortTest, APortPickedHereCannotBeClaimedByAnotherProcess) {
  unsigned port = pickFreePort();
  EXPECT_EQ(inChild([&] { return claimPort(port) ? 1 : 0; }), 0) << "another process could claim port " << port;
  // Nor picked there: a child drawing ports never draws this one.
  EXPECT_EQ(inChild([&] {
              for (int i = 0; i < 200; ++i) {
                if (pickFreePort() == port) return 1;
              }
              return 0;
            }),
            0);
}

TEST(FreePortTest, AClaimComesBackWhenItsProcessEnds) {
  int toParent[2], toChild[2];
  ASSERT_EQ(::pipe(toParent), 0);
  ASSERT_EQ(::pipe(toChild), 0);
  pid_t pid = ::fork();
  if (pid == 0) {
    unsigned p = pickFreePort();
    if (::write(toParent[1], &p, sizeof p) != sizeof p) ::_exit(2);
    char c;
    (void)::read(toChild[0], &c, 1);  // held until the parent has looked
    ::_exit(0);
  }
  unsigned port = 0;
  ASSERT_EQ(::read(toParent[0], &port, sizeof port), ssize_t(sizeof port));
  EXPECT_FALSE(claimPort(port)) << "port " << port << " is claimed by a live process";
  ASSERT_EQ(::write(toChild[1], "x", 1), 1);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(claimPort(port)) << "the claim of a process that ended was not given back";
  for (int fd : {toParent[0], toParent[1], toChild[0], toChild[1]}) ::close(fd);
}

}  // namespace
}  // namespace keel
