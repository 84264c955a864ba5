#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int argc,char**argv){
  int mode=atoi(argv[1]); int n=2000;
  int flags=O_RDWR|O_CREAT; if(mode==1) flags|=O_DIRECT|O_DSYNC; if(mode==2) flags|=O_DSYNC;
  int fd=open("f.bin",flags,0644); ftruncate(fd,64<<20);
  // prefill zeros
  char*z; posix_memalign((void**)&z,4096,1<<20); memset(z,0,1<<20);
  for(int i=0;i<64;i++) pwrite(fd,z,1<<20,(off_t)i<<20); fsync(fd);
  char*buf; posix_memalign((void**)&buf,4096,8192); memset(buf,'x',8192);
  double*l=malloc(n*sizeof(double)); struct rusage a,b; getrusage(RUSAGE_SELF,&a);
  for(int i=0;i<n;i++){double t=now(); pwrite(fd,buf,4096,(off_t)i*4096); if(mode==0) fdatasync(fd); l[i]=now()-t;}
  getrusage(RUSAGE_SELF,&b); qsort(l,n,sizeof(double),cmp);
  printf("mode %d p50 %.1f p90 %.1f vcsw/op %.2f\n",mode,l[n/2],l[n*9/10],(double)(b.ru_nvcsw-a.ru_nvcsw)/n);
}
