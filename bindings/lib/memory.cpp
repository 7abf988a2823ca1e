// libcunet: which build this is, memory and copies for the launchers' pointers, the host
// build's switches. Host build: "device" memory is host memory (copies are memcpy).
#include <cstdlib>

#include "lib.h"

#if defined(CUNET_GPU)
namespace {
// what (and, when not 0, the byte count) go into the message only on failure
void check(cudaError_t e, const char* what, size_t bytes = 0) {
    if (e != cudaSuccess)
        throw std::runtime_error(std::string("cunet: ") + what + (bytes ? " of " + std::to_string(bytes) + " bytes" : "") +
                                 " failed: " + cudaGetErrorString(e));
}
}  // namespace
#endif

namespace cunet::ops {

const char* build() {
#if defined(CUNET_GPU)
    return "cuda";
#else
    return "host";
#endif
}

void* device_alloc(size_t bytes) {
    if (bytes == 0) return nullptr;
#if defined(CUNET_GPU)
    void* p = nullptr;
    check(cudaMalloc(&p, bytes), "cudaMalloc", bytes);
    return p;
#else
    void* p = std::malloc(bytes);
    if (!p) throw std::runtime_error("cunet: allocation of " + std::to_string(bytes) + " bytes failed");
    return p;
#endif
}

void device_free(void* p) {
#if defined(CUNET_GPU)
    if (p) cudaFree(p);   // no throw: called from destructors
#else
    std::free(p);
#endif
}

void copy_to_device(void* dst, const void* src, size_t bytes, void* stream) {
    if (bytes == 0) return;
#if defined(CUNET_GPU)
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_of(stream)), "copy to the device", bytes);
#else
    (void)stream;
    std::memcpy(dst, src, bytes);
#endif
}

void copy_to_host(void* dst, const void* src, size_t bytes, void* stream) {
    if (bytes == 0) return;
#if defined(CUNET_GPU)
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_of(stream)), "copy to the host", bytes);
#else
    (void)stream;
    std::memcpy(dst, src, bytes);
#endif
}

void synchronize(void* stream) {
#if defined(CUNET_GPU)
    check(cudaStreamSynchronize(stream_of(stream)), "cudaStreamSynchronize");
#else
    (void)stream;
#endif
}

void set_emulate_blocks(bool on) { cunet::emulate_blocks() = on; }
bool emulate_blocks() { return cunet::emulate_blocks(); }
void set_host_variants(bool on) { cunet::host_variants() = on; }
bool host_variants() { return cunet::host_variants(); }

}  // namespace cunet::ops
