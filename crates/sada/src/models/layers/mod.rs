//! Building blocks shared by the networks: convolution, ResNet blocks and resampling,
//! attention, feed-forward, linear layers, timestep embeddings.

pub mod attention;
pub mod conv;
pub mod feed_forward;
pub mod linear;
pub mod norm;
pub mod resnet;
pub mod timestep;
pub mod weight;
