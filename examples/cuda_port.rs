//! Porting a CUDA managed-memory program: SAXPY (`y = a*x + y`) with
//! `cudaMallocManaged`, `cudaMemAdvise` and `cudaMemPrefetchAsync`, each CUDA
//! call shown beside the svmem call that replaces it.
//!
//! `cargo run --example cuda_port`; `cargo test --example cuda_port`.

use svmem::{DeviceId, Location, MemAdvice, Svm};

const GPU: DeviceId = DeviceId(0);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = 1 << 20; // 1M floats, 4 MiB per array
    let bytes = (n * 4) as u64;
    let a = 2.0f32;

    // cudaSetDevice(0);                       (the Svm owns its devices)
    let svm = Svm::with_emulated(64 << 20)?;

    // float *x, *y;
    // cudaMallocManaged(&x, n * sizeof(float));
    // cudaMallocManaged(&y, n * sizeof(float));
    let mut x = svm.alloc(n * 4)?;
    let mut y = svm.alloc(n * 4)?;

    // for (i = 0; i < n; i++) { x[i] = i; y[i] = 1; }    (on the host)
    for (i, v) in x.as_mut_slice::<f32>().iter_mut().enumerate() {
        *v = i as f32;
    }
    y.as_mut_slice::<f32>().fill(1.0);

    // cudaMemAdvise(x, bytes, cudaMemAdviseSetReadMostly, 0);
    svm.advise(x.addr(), bytes, MemAdvice::SetReadMostly)?;
    // cudaMemAdvise(y, bytes, cudaMemAdviseSetPreferredLocation, 0);
    svm.advise(
        y.addr(),
        bytes,
        MemAdvice::SetPreferredLocation(Location::Device(GPU)),
    )?;

    // cudaMemPrefetchAsync(x, bytes, 0, stream);
    // cudaMemPrefetchAsync(y, bytes, 0, stream);
    svm.prefetch(x.addr(), bytes, Location::Device(GPU))?;
    let moved = svm.prefetch(y.addr(), bytes, Location::Device(GPU))?;
    assert_eq!(moved.migrated, y.npages() as u64);

    // saxpy<<<(n + 255) / 256, 256>>>(n, a, x, y);
    // __global__ void saxpy(int n, float a, float *x, float *y) {
    //     int i = blockIdx.x * blockDim.x + threadIdx.x;
    //     if (i < n) y[i] = a * x[i] + y[i];
    // }
    let (xa, ya) = (x.addr(), y.addr());
    let report = svm.device(GPU)?.launch(n as u64, |lane, i| {
        let xi: f32 = lane.load(xa.offset(i * 4))?;
        let yi: f32 = lane.load(ya.offset(i * 4))?;
        lane.store(ya.offset(i * 4), a * xi + yi)
    })?;
    // cudaDeviceSynchronize();                (a launch returns when done)
    report.check()?;

    // cudaMemPrefetchAsync(y, bytes, cudaCpuDeviceId, stream);
    svm.prefetch(y.addr(), bytes, Location::System)?;

    // Check on the host (CUDA: the same loop over y).
    for (i, &v) in y.as_slice::<f32>().iter().enumerate() {
        let want = a * i as f32 + 1.0;
        if v != want {
            return Err(format!("y[{i}] = {v}, expected {want}").into());
        }
    }
    // cudaFree(x); cudaFree(y);               (dropping a Region frees it)
    drop((x, y));
    assert_eq!(svm.memory_usage().managed_bytes, 0);
    println!("cuda_port: saxpy over {n} floats checked");
    Ok(())
}

#[test]
fn runs_and_checks_its_data() {
    main().expect("the cuda_port example");
}
