// Long native work (training and inference steps) runs on one compute thread of the addon's
// own, never on libuv's pool: that pool is left to file I/O and image decoding (four long steps
// would otherwise stall every fs call behind them). Results come back through one
// thread-safe function that settles the job's promise on the JS thread.
#pragma once
#include <napi.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "../core/status.h"

namespace repadapter {

struct Job {
  std::function<Status()> work;                  // compute thread
  std::function<Napi::Value(Napi::Env)> finish;  // JS thread, after work succeeded
  std::function<void()> settle;                  // JS thread, always (clears busy flags)
  Napi::Promise::Deferred deferred;
  std::vector<Napi::ObjectReference> keep_alive;  // inputs that must outlive the work
  Status status;
  explicit Job(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

class ComputeQueue {
 public:
  explicit ComputeQueue(Napi::Env env);
  ~ComputeQueue();
  // Queues the job (JS thread) and returns its promise.
  Napi::Promise submit(std::unique_ptr<Job> job);
  // Stops the thread after the job in flight; pending jobs are dropped (environment teardown).
  void shutdown();

 private:
  void run();
  static void deliver(Napi::Env env, Napi::Function, ComputeQueue* queue, Job* job);

  Napi::ThreadSafeFunction tsfn_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Job*> jobs_;
  bool stopping_ = false;
  bool stopped_ = false;
  int in_flight_ = 0;  // JS thread only: submitted and not yet settled
};

}  // namespace repadapter
