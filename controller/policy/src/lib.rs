//! The Palisade policy language. Pure: callers hand in file names and text, nothing here reads
//! files, talks to Kubernetes or touches the kernel.
