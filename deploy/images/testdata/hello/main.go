// Command hello is the tiny binary deploy/images' test puts in an image.
package main

import "fmt"

func main() { fmt.Println("hello") }
