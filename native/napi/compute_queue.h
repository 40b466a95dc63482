// All native compute (training and inference steps, optimizer updates, single ops) runs on one
// compute thread of the addon's own:
//  - never on libuv's pool, which is left to file I/O and image decoding (four long steps would
//    otherwise stall every fs call behind them);
//  - never on the JS thread either, even for synchronous calls (run_sync hands the work over and
//    waits): OpenMP keeps one thread team per calling thread, and two teams on a small machine
//    make every parallel region wait for sleeping threads (a small forward took 7 ms instead of
//    0.4 ms once both threads had computed).
// Async results come back through one thread-safe function that settles the job's promise on
// the JS thread.
#pragma once
#include <napi.h>

#include <condition_variable>
#include <deque>
#include <future>
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
  // Runs work on the compute thread, after the jobs queued before it, and waits for it.
  Status run_sync(const std::function<Status()>& work);
  // Stops the thread after the job in flight; pending jobs are dropped (environment teardown).
  void shutdown();

 private:
  void run();
  static void deliver(Napi::Env env, Napi::Function, ComputeQueue* queue, Job* job);

  Napi::ThreadSafeFunction tsfn_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  std::vector<Job*> pending_;  // async jobs not yet run (freed at shutdown)
  bool stopping_ = false;
  bool stopped_ = false;
  int in_flight_ = 0;  // JS thread only: submitted and not yet settled
};

}  // namespace repadapter
