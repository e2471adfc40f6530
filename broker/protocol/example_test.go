package protocol_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/walrus-edge/walrus/broker/protocol"
	"github.com/walrus-edge/walrus/broker/protocol/protocoltest"
)

func ExampleClient() {
	srv, err := protocoltest.NewServer(protocoltest.NewMemory()) // a stand-in for a Walrus node
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := protocol.Dial(ctx, srv.Addr())
	if err != nil {
		panic(err)
	}
	defer c.Close()

	err = c.Put(ctx, "logs", []byte("too early"))
	var se *protocol.ServerError
	if errors.As(err, &se) {
		fmt.Println("ERR", se.Message)
	}
	_ = c.Register(ctx, "logs")
	_ = c.Put(ctx, "logs", []byte("hello world"))
	payload, ok, _ := c.Get(ctx, "logs")
	fmt.Printf("%s %v\n", payload, ok)
	_, ok, _ = c.Get(ctx, "logs")
	fmt.Println(ok)
	reply, _ := c.Do(ctx, "GARBAGE")
	fmt.Println(reply)
	// Output:
	// ERR unknown topic logs
	// hello world true
	// false
	// ERR unknown command
}

func ExampleParse() {
	cmd, err := protocol.Parse([]byte("PUT logs  two spaces kept, trailing lost \r\n"))
	fmt.Printf("%v %q %q %v\n", cmd.Verb, cmd.Topic, cmd.Payload, err)
	_, err = protocol.Parse([]byte("put logs x"))
	fmt.Println(protocol.ReplyForError(err))
	// Output:
	// PUT "logs" " two spaces kept, trailing lost" <nil>
	// ERR unknown command
}
