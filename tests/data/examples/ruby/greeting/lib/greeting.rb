module Greeting
  def self.hello
    'hello world'
  end
end
