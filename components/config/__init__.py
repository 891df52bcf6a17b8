"""What `pulumi up` reads and checks before it declares anything: the cluster's inputs (the stack's config, or a
package consumer's) into one validated, frozen description of the cluster. Every bad value is a pulumi.RunError
naming the key, the value and what is allowed."""
