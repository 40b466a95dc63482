#include "compute_queue.h"

#include <algorithm>

#include "errors.h"

namespace repadapter {


ComputeQueue::ComputeQueue(Napi::Env env) {
  tsfn_ = Napi::ThreadSafeFunction::New(
      env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), "repadapter-compute", 0, 1);
  tsfn_.Unref(env);  // an idle queue must not keep the process alive
  thread_ = std::thread([this] { run(); });
}

ComputeQueue::~ComputeQueue() { shutdown(); }

void ComputeQueue::shutdown() {
  if (stopped_) return;
  stopped_ = true;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  tasks_.clear();
  for (Job* job : pending_) delete job;
  pending_.clear();
  tsfn_.Abort();
}

Napi::Promise ComputeQueue::submit(std::unique_ptr<Job> job) {
  Napi::Env env = job->deferred.Env();
  Napi::Promise promise = job->deferred.Promise();
  if (in_flight_++ == 0) tsfn_.Ref(env);
  Job* raw = job.release();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_.push_back(raw);
    tasks_.push_back([this, raw] {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        pending_.erase(std::find(pending_.begin(), pending_.end(), raw));
      }
      raw->status = raw->work();
      // Hand the finished job to the JS thread. If the environment is going away the call
      // fails and the job's JS handles die with it.
      tsfn_.BlockingCall(raw, [this](Napi::Env env, Napi::Function fn, Job* j) { deliver(env, fn, this, j); });
    });
  }
  wake_.notify_one();
  return promise;
}

Status ComputeQueue::run_sync(const std::function<Status()>& work) {
  if (std::this_thread::get_id() == thread_.get_id()) return work();
  std::promise<Status> done;
  std::future<Status> result = done.get_future();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return Unavailable("the compute thread has stopped");
    tasks_.push_back([&work, &done] { done.set_value(work()); });
  }
  wake_.notify_one();
  return result.get();
}

void ComputeQueue::run() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !tasks_.empty(); });
      if (stopping_) return;
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

void ComputeQueue::deliver(Napi::Env env, Napi::Function, ComputeQueue* queue, Job* job) {
  std::unique_ptr<Job> owned(job);
  if (env == nullptr) return;
  Napi::HandleScope scope(env);
  if (owned->settle) owned->settle();
  if (--queue->in_flight_ == 0) queue->tsfn_.Unref(env);
  if (!owned->status.ok()) {
    owned->deferred.Reject(status_to_error(env, owned->status).Value());
    return;
  }
  try {
    owned->deferred.Resolve(owned->finish(env));
  } catch (const Napi::Error& e) {
    owned->deferred.Reject(e.Value());
  }
}

}  // namespace repadapter
