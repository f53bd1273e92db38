#include "passthru/peer_dma.h"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>

#include "base/eprint.h"
#include "confine/seccomp.h"
#include "memory/layout.h"

namespace passvm::passthru {

PeerDma::PeerDma(vfio::DmaMapper& iommu, std::string name, bool verbose)
    : iommu_(iommu), name_(std::move(name)), verbose_(verbose) {
  // Started now rather than at the first map(), which comes from a vCPU: vCPU threads may not start threads.
  worker_ = std::thread([this] { run(); });
}

PeerDma::~PeerDma() {
  {
    std::unique_lock g(m_);
    stop_ = cancel_ = true;
    queue_.clear();
    cv_.notify_all();
  }
  if (worker_.joinable()) worker_.join();
  std::lock_guard g(m_);
  while (!done_.empty()) unmap_pieces(done_.begin()->first);
}

void PeerDma::map(int bar, uint64_t iova, uint64_t size, void* host) {
  std::lock_guard g(m_);
  queue_.push_back({bar, iova, size, host});
  cv_.notify_all();
}

void PeerDma::unmap(uint64_t iova) {
  std::unique_lock g(m_);
  std::erase_if(queue_, [&](const Job& j) { return j.iova == iova; });
  if (busy_ && busy_->iova == iova) cancel_ = true;
  cv_.wait(g, [&] { return !busy_ || busy_->iova != iova; });
  unmap_pieces(iova);
}

void PeerDma::unmap_pieces(uint64_t iova) {
  auto it = done_.find(iova);
  if (it == done_.end()) return;
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t bytes = 0;
  for (const vfio::Area& p : it->second) {
    bytes += p.size;
    try {
      iommu_.unmap_dma(p.offset, p.size);
    } catch (const std::exception& e) {
      eprint("passvm: {}: unmapping a BAR from the IOMMU: {}\n", name_, e.what());
    }
  }
  done_.erase(it);
  if (verbose_ && bytes > 0)
    said_.say(fmt::format("{} at {:#x} out of the IOMMU in {:.2f} ms", layout::size_text(bytes), iova,
                          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count()));
}

void PeerDma::wait_idle() {
  std::unique_lock g(m_);
  cv_.wait(g, [&] { return queue_.empty() && !busy_ && !saying_; });
}

bool PeerDma::stopping() const {
  std::lock_guard g(m_);
  return busy_ && cancel_;
}

size_t PeerDma::mapped() const {
  std::lock_guard g(m_);
  return done_.size();
}

void PeerDma::run() {
  confine::enter(confine::ThreadClass::PeerDma, "pv-p2p");
  std::unique_lock g(m_);
  for (;;) {
    cv_.wait(g, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    const Job job = queue_.front();
    queue_.pop_front();
    busy_ = job;
    cancel_ = false;
    auto& pieces = done_[job.iova];
    const auto t0 = std::chrono::steady_clock::now();
    std::string error;
    for (uint64_t at = 0; at < job.size && !cancel_ && error.empty();) {
      uint64_t piece = vfio::dma_piece(job.iova + at, job.size - at);
      g.unlock();
      try {
        iommu_.map_dma({.iova = job.iova + at, .size = piece, .host = static_cast<uint8_t*>(job.host) + at});
      } catch (const std::exception& e) {
        error = e.what();
      }
      g.lock();
      if (error.empty()) pieces.push_back({job.iova + at, piece});
      at += piece;
    }
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    // Said once m_ is released: a stalled stderr must not hold a vCPU waiting in unmap().
    std::string said;
    if (verbose_ && error.empty() && !cancel_)
      said = fmt::format("BAR {} at {:#x} ({}) open to peer-to-peer DMA after {:.2f} ms in the IOMMU", job.bar,
                         job.iova, layout::size_text(job.size), ms);
    else if (verbose_ && error.empty())
      said = fmt::format("mapping BAR {} at {:#x} into the IOMMU stopped after {} of {} ({:.2f} ms)", job.bar,
                         job.iova, pieces.size(), layout::size_text(job.size), ms);
    if (!error.empty()) unmap_pieces(job.iova);  // all or nothing: a half-mapped BAR helps no one
    else if (pieces.empty()) done_.erase(job.iova);
    busy_.reset();
    saying_ = true;
    cv_.notify_all();
    g.unlock();
    // The guest places its BARs, and may do so again and again: the refusals are counted past a few.
    if (!error.empty())
      refused_.say(fmt::format("the IOMMU refused BAR {} at {:#x} for peer-to-peer DMA: {}; other devices cannot "
                               "DMA into it (the guest's own use of the BAR is unaffected)", job.bar, job.iova, error));
    else if (!said.empty())
      said_.say(said);
    g.lock();
    saying_ = false;
    cv_.notify_all();
  }
}

}  // namespace passvm::passthru
