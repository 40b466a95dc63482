#include "compute_queue.h"

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
  for (Job* job : jobs_) delete job;
  jobs_.clear();
  tsfn_.Abort();
}

Napi::Promise ComputeQueue::submit(std::unique_ptr<Job> job) {
  Napi::Env env = job->deferred.Env();
  Napi::Promise promise = job->deferred.Promise();
  if (in_flight_++ == 0) tsfn_.Ref(env);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    jobs_.push_back(job.release());
  }
  wake_.notify_one();
  return promise;
}

void ComputeQueue::run() {
  for (;;) {
    Job* job = nullptr;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      job = jobs_.front();
      jobs_.pop_front();
    }
    job->status = job->work();
    // Hand the finished job to the JS thread. If the environment is going away the call fails
    // and the job's JS handles die with it.
    auto call = [this, job]() {
      napi_status s = tsfn_.BlockingCall(job, [this](Napi::Env env, Napi::Function fn, Job* j) {
        deliver(env, fn, this, j);
      });
      return s;
    };
    if (call() != napi_ok) return;
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
