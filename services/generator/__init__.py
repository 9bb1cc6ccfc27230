"""The generator service: our StyleGAN2 (`model`), the official checkpoint readers (`model`,
`nvlabs`), random weights in the official layouts (`random_weights`), the photoreal candidate
strategies (`manipulate`) and the gRPC/queue wiring (`service`)."""
